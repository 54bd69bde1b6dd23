"""Pinhole cameras with OpenCV lens distortion, and the calibration files that describe them.

A calibration file (calib/<name>.yml, written by `streampose calib camera`, see calib/README.md):

    image_size: [1280, 720]       # width, height of the calibration images, pixels
    fx: 912.4                     # focal lengths, pixels
    fy: 911.8
    cx: 641.2                     # principal point, pixels
    cy: 359.7
    distortion: [k1, k2, p1, p2, k3]   # OpenCV order (4, 5, 8, 12 or 14 values); [] = none
    camera_height_m: 2.4          # optional: lens height above a flat floor, camera level
    ground_plane: [a, b, c, d]    # optional instead: a x + b y + c z + d = 0 in the camera frame, metres
    rms_px: 0.21                  # optional, informative: calibration reprojection error
    board: 9x6 inner corners      # optional, informative
    images: 24                    # optional, informative

Streams whose frames have another size than image_size use the intrinsics scaled to it (same
aspect ratio only). A stream without a file gets `assumed_camera`: a centred principal point
and square pixels with an assumed horizontal field of view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from streampose.yaml_file import read_yaml

DISTORTION_LENGTHS = (0, 4, 5, 8, 12, 14)
_INFORMATIVE_KEYS = {"rms_px", "board", "images"}
_KEYS = {"image_size", "fx", "fy", "cx", "cy", "distortion", "camera_height_m", "ground_plane"} | _INFORMATIVE_KEYS
# Relative difference of aspect ratios above which a calibration does not fit a stream.
_ASPECT_TOLERANCE = 0.01


class CalibError(ValueError):
    """A calibration file that cannot be read or does not fit."""


@dataclass(frozen=True)
class Camera:
    """Intrinsics of one camera at one image size, and optionally where the floor is.

    width, height: image size in pixels.
    fx, fy:        focal lengths in pixels; cx, cy: principal point in pixels.
    distortion:    OpenCV coefficients (k1, k2, p1, p2[, k3...]); () = none.
    ground_plane:  (a, b, c, d), unit normal (a, b, c) pointing up, a x + b y + c z + d = 0 for
                   points on the floor in the camera frame (metres); d is the lens's height above
                   the floor. None when unknown.
    source:        where it came from (a file, or the assumption), for logs.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()
    ground_plane: tuple[float, float, float, float] | None = None
    source: str = ""

    @property
    def matrix(self) -> np.ndarray:
        """(3, 3) float64 camera matrix K."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], np.float64)

    def rays(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised image coordinates (x/z, y/z), lens distortion removed, of pixel
        positions (..., 2); returns (..., 2) float64."""
        pixels = np.asarray(pixels, np.float64)
        if not any(self.distortion):
            return (pixels - (self.cx, self.cy)) / (self.fx, self.fy)
        flat = pixels.reshape(-1, 1, 2)
        if not len(flat):
            return np.zeros(pixels.shape, np.float64)
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-9)
        undistorted = cv2.undistortPoints(flat, self.matrix, np.array(self.distortion), criteria=criteria)
        return undistorted.reshape(pixels.shape)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixel positions (..., 2) float64 of camera-frame points (..., 3) in front of the lens."""
        points = np.asarray(points, np.float64)
        if not any(self.distortion):
            return points[..., :2] / points[..., 2:3] * (self.fx, self.fy) + (self.cx, self.cy)
        flat = points.reshape(-1, 1, 3)
        if not len(flat):
            return np.zeros((*points.shape[:-1], 2), np.float64)
        pixels, _ = cv2.projectPoints(flat, np.zeros(3), np.zeros(3), self.matrix, np.array(self.distortion))
        return pixels.reshape(*points.shape[:-1], 2)

    def resized(self, width: int, height: int) -> Camera:
        """The same camera delivering frames of width x height (a scaled, not cropped, image)."""
        if (width, height) == (self.width, self.height):
            return self
        aspect, own = width / height, self.width / self.height
        if abs(aspect / own - 1) > _ASPECT_TOLERANCE:
            raise CalibError(f"{self.source}: calibrated at {self.width}x{self.height} but frames are "
                             f"{width}x{height}, another aspect ratio (cropped?); calibrate at this size")
        sx, sy = width / self.width, height / self.height
        return replace(self, width=width, height=height, fx=self.fx * sx, fy=self.fy * sy,
                       cx=(self.cx + 0.5) * sx - 0.5, cy=(self.cy + 0.5) * sy - 0.5)


def assumed_camera(width: int, height: int, hfov_deg: float) -> Camera:
    """A camera of horizontal field of view `hfov_deg`, square pixels, centred, no distortion."""
    focal = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    return Camera(width, height, focal, focal, (width - 1) / 2, (height - 1) / 2,
                  source=f"assumed {hfov_deg:g} deg horizontal field of view")


def level_ground(camera_height_m: float) -> tuple[float, float, float, float]:
    """The floor plane seen by a level camera (no pitch or roll) `camera_height_m` above it."""
    return (0.0, -1.0, 0.0, float(camera_height_m))


def load_camera(path: str | Path) -> Camera:
    """Read a calibration file. Raises CalibError naming the file and the key at fault."""
    return parse_camera(read_yaml(Path(path), "calibration file", CalibError), str(path))


def parse_camera(data: object, source: str) -> Camera:
    """Validate a parsed calibration mapping; `source` names it in errors."""

    def fail(key: str, problem: str) -> CalibError:
        return CalibError(f"{source}: key '{key}': {problem}")

    def number(key: str, positive: bool = True) -> float:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise fail(key, f"expected a number, got {value!r}" if key in data else "missing")
        if positive and value <= 0:
            raise fail(key, f"must be > 0, got {value}")
        return float(value)

    if not isinstance(data, dict):
        raise CalibError(f"{source}: expected a mapping with image_size, fx, fy, cx, cy, distortion")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key; keys: {', '.join(sorted(_KEYS))}")
    size = data.get("image_size")
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise fail("image_size", f"expected [width, height], positive integers, got {size!r}")
    distortion = data.get("distortion", [])
    if not (isinstance(distortion, list) and len(distortion) in DISTORTION_LENGTHS
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in distortion)):
        raise fail("distortion", f"expected a list of 4, 5, 8, 12 or 14 numbers (OpenCV order k1, k2, p1, p2, "
                                 f"k3...) or [], got {distortion!r}")
    if "camera_height_m" in data and "ground_plane" in data:
        raise fail("camera_height_m", "give either camera_height_m (a level camera) or ground_plane, not both")
    ground = None
    if "camera_height_m" in data:
        ground = level_ground(number("camera_height_m"))
    elif "ground_plane" in data:
        ground = _ground_plane(data["ground_plane"], fail)
    return Camera(width=size[0], height=size[1], fx=number("fx"), fy=number("fy"), cx=number("cx", False),
                  cy=number("cy", False), distortion=tuple(float(v) for v in distortion), ground_plane=ground,
                  source=source)


def _ground_plane(value: object, fail) -> tuple[float, float, float, float]:
    if not (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise fail("ground_plane", f"expected [a, b, c, d] (a x + b y + c z + d = 0, metres), got {value!r}")
    plane = np.array(value, np.float64)
    norm = np.linalg.norm(plane[:3])
    if norm == 0 or plane[3] == 0:
        raise fail("ground_plane", f"{value}: the normal (a, b, c) must be non-zero and the camera must not lie "
                                   "in the plane (d != 0)")
    plane /= norm * np.sign(plane[3])  # unit normal, pointing to the camera's side
    return tuple(plane.tolist())


def save_camera(camera: Camera, path: str | Path, *, rms_px: float | None = None, board: str | None = None,
                images: int | None = None) -> None:
    """Write `camera` as a calibration file (the format load_camera reads)."""
    lines = [
        "# Camera calibration for streampose (see calib/README.md).",
        f"image_size: [{camera.width}, {camera.height}]  # width, height, pixels",
        f"fx: {camera.fx:.4f}  # focal length, pixels",
        f"fy: {camera.fy:.4f}",
        f"cx: {camera.cx:.4f}  # principal point, pixels",
        f"cy: {camera.cy:.4f}",
        f"distortion: [{', '.join(f'{v:.8g}' for v in camera.distortion)}]  # OpenCV order k1, k2, p1, p2, k3",
    ]
    if camera.ground_plane is not None:
        plane = ", ".join(f"{v:.6f}" for v in camera.ground_plane)
        lines.append(f"ground_plane: [{plane}]  # a x + b y + c z + d = 0, camera frame, metres")
    if rms_px is not None:
        lines.append(f"rms_px: {rms_px:.4f}  # reprojection error of the calibration")
    if board is not None:
        lines.append(f"board: {board}")
    if images is not None:
        lines.append(f"images: {images}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
