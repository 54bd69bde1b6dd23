"""`streampose calib camera IMAGES... -o calib/NAME.yml`: camera intrinsics from checkerboard images.

OpenCV finds the board's inner corners in each image (findChessboardCornersSB, sub-pixel) and
solves the pinhole model with lens distortion k1, k2, p1, p2, k3 (calibrateCamera). With
`--floor IMAGE`, an image taken by the camera in its final place of the board lying flat on
the floor, the floor plane in the camera frame is added (solvePnP; needs --square-mm); with
`--camera-height-m` a level camera's height is recorded instead. See calib/README.md.

`add_calib_parser(subparsers)` adds the command to the main parser; it sets `func(args) -> exit code`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streampose.geometry.camera import Camera, level_ground, save_camera
from streampose.sources.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

MIN_IMAGES = 3
# Fewer views than this, or a reprojection error above WORST_RMS_PX, give a warning.
ADVISED_IMAGES = 10
WORST_RMS_PX = 1.0
_FIND_FLAGS = cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_EXHAUSTIVE | cv2.CALIB_CB_ACCURACY


class CalibrationError(ValueError):
    """The images cannot give a calibration (unreadable, mixed sizes, too few boards found)."""


@dataclass(frozen=True)
class Calibration:
    """camera: the result; rms_px: reprojection error over all corners, pixels;
    used / skipped: image paths whose board was / was not found."""

    camera: Camera
    rms_px: float
    used: list[Path]
    skipped: list[Path]


def parse_board(text: str) -> tuple[int, int]:
    """'9x6' -> (9, 6): inner corners along a row and along a column."""
    try:
        columns, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CalibrationError(f"--board {text!r}: expected COLUMNSxROWS of inner corners, e.g. 9x6") from None
    if columns < 2 or rows < 2:
        raise CalibrationError(f"--board {text!r}: a board has at least 2x2 inner corners")
    return columns, rows


def image_files(paths: list[Path]) -> list[Path]:
    """The files named, folders expanded to their images (sorted by name)."""
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CalibrationError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise CalibrationError(f"{path}: no such file or folder")
    return files


def board_points(board: tuple[int, int], square_m: float = 1.0) -> np.ndarray:
    """(columns * rows, 3) float32 corner positions on the board plane (z = 0), row by row."""
    columns, rows = board
    grid = np.mgrid[0:columns, 0:rows].T.reshape(-1, 2) * square_m
    return np.hstack([grid, np.zeros((len(grid), 1))]).astype(np.float32)


def find_board(image_path: Path, board: tuple[int, int]) -> tuple[np.ndarray | None, tuple[int, int]]:
    """The board's inner corners (columns * rows, 1, 2) float32 in the image, or None, and the
    image size (width, height)."""
    gray = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise CalibrationError(f"{image_path}: cannot read this image")
    found, corners = cv2.findChessboardCornersSB(gray, board, flags=_FIND_FLAGS)
    return (corners.astype(np.float32) if found else None), (gray.shape[1], gray.shape[0])


def calibrate(paths: list[Path], board: tuple[int, int]) -> Calibration:
    """Intrinsics and distortion from images of a board with `board` inner corners."""
    corners, used, skipped, size = [], [], [], None
    for path in image_files(paths):
        found, image_size = find_board(path, board)
        if size is None:
            size = image_size
        elif image_size != size:
            raise CalibrationError(f"{path}: {image_size[0]}x{image_size[1]}, but the first image is "
                                   f"{size[0]}x{size[1]}; calibrate one camera mode at a time")
        if found is None:
            skipped.append(path)
            log.warning("%s: no %dx%d board found; skipped", path, *board)
        else:
            corners.append(found)
            used.append(path)
    if len(used) < MIN_IMAGES:
        raise CalibrationError(f"a {board[0]}x{board[1]} inner-corner board was found in {len(used)} of "
                               f"{len(used) + len(skipped)} images; at least {MIN_IMAGES} are needed (check --board: "
                               "count inner corners, where four squares meet)")
    objects = [board_points(board)] * len(corners)
    rms, matrix, distortion, _, _ = cv2.calibrateCamera(objects, corners, size, None, None)
    camera = Camera(width=size[0], height=size[1], fx=float(matrix[0, 0]), fy=float(matrix[1, 1]),
                    cx=float(matrix[0, 2]), cy=float(matrix[1, 2]),
                    distortion=tuple(float(v) for v in distortion.ravel()), source="calibration")
    return Calibration(camera, float(rms), used, skipped)


def floor_plane(camera: Camera, image_path: Path, board: tuple[int, int],
                square_m: float) -> tuple[float, float, float, float]:
    """The floor (a, b, c, d) in the camera frame, from an image of the board lying on it."""
    corners, size = find_board(image_path, board)
    if corners is None:
        raise CalibrationError(f"{image_path}: no {board[0]}x{board[1]} board found on the floor")
    if size != (camera.width, camera.height):
        raise CalibrationError(f"{image_path}: {size[0]}x{size[1]}, but the calibration images are "
                               f"{camera.width}x{camera.height}")
    ok, rotation, translation = cv2.solvePnP(board_points(board, square_m), corners, camera.matrix,
                                             np.array(camera.distortion))
    if not ok:
        raise CalibrationError(f"{image_path}: cannot find the board's pose")
    normal = cv2.Rodrigues(rotation)[0][:, 2]             # the board's z axis, in the camera frame
    offset = -float(normal @ translation.ravel())
    if offset < 0:                                         # make the normal point up, to the camera
        normal, offset = -normal, -offset
    return (*(float(v) for v in normal), offset)


def cmd_camera(args) -> int:
    try:
        board = parse_board(args.board)
        if args.output.exists() and not args.force:
            raise CalibrationError(f"{args.output} already exists (use --force to replace it)")
        if args.floor is not None and args.square_mm is None:
            raise CalibrationError("--floor needs --square-mm, the side of one board square")
        if args.floor is not None and args.camera_height_m is not None:
            raise CalibrationError("give --floor or --camera-height-m, not both")
        result = calibrate(args.images, board)
        camera = result.camera
        if args.floor is not None:
            ground = floor_plane(camera, args.floor, board, args.square_mm / 1000)
            camera = Camera(**{**camera.__dict__, "ground_plane": ground})
        elif args.camera_height_m is not None:
            if args.camera_height_m <= 0:
                raise CalibrationError(f"--camera-height-m must be > 0, got {args.camera_height_m}")
            camera = Camera(**{**camera.__dict__, "ground_plane": level_ground(args.camera_height_m)})
    except CalibrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_camera(camera, args.output, rms_px=result.rms_px, board=f"{board[0]}x{board[1]} inner corners",
                images=len(result.used))
    print(f"wrote {args.output}: {camera.width}x{camera.height}, fx {camera.fx:.1f} fy {camera.fy:.1f} px, "
          f"centre ({camera.cx:.1f}, {camera.cy:.1f}), distortion "
          f"[{', '.join(f'{v:.4f}' for v in camera.distortion)}], reprojection error {result.rms_px:.3f} px, "
          f"{len(result.used)} images used" + (f", {len(result.skipped)} without a board" if result.skipped else ""))
    if camera.ground_plane is not None:
        print(f"floor: camera {camera.ground_plane[3]:.2f} m above it")
    if len(result.used) < ADVISED_IMAGES:
        print(f"warning: only {len(result.used)} views; {ADVISED_IMAGES}+ views with the board tilted and near "
              "the image corners give a steadier calibration", file=sys.stderr)
    if result.rms_px > WORST_RMS_PX:
        print(f"warning: reprojection error {result.rms_px:.2f} px is high (blurred images, a bent board, or a "
              "wrong --board?)", file=sys.stderr)
    return 0


def add_calib_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("calib", help="camera calibration for 3D pose")
    commands = parser.add_subparsers(dest="calib_command", required=True, metavar="COMMAND")
    cmd = commands.add_parser("camera", help="intrinsics and lens distortion from checkerboard images",
                              description=__doc__.split("\n\n")[1])
    cmd.add_argument("images", nargs="+", type=Path, help="images of a flat checkerboard (or folders of them), "
                     "taken by the camera at the resolution it streams")
    cmd.add_argument("-o", "--output", type=Path, required=True, help="calibration file to write, calib/<name>.yml")
    cmd.add_argument("--board", default="9x6", help="inner corners along a row x along a column (default 9x6, "
                     "a board of 10x7 squares)")
    cmd.add_argument("--square-mm", type=float, help="side of one square, mm (needed with --floor)")
    cmd.add_argument("--floor", type=Path, help="an image of the board lying flat on the floor, taken by the camera "
                     "mounted where it will stay: records the floor plane (ground_plane)")
    cmd.add_argument("--camera-height-m", type=float, help="instead of --floor: the lens's height above the floor, "
                     "metres, for a level camera")
    cmd.add_argument("--force", action="store_true", help="replace an existing file")
    cmd.set_defaults(func=cmd_camera)
    return parser
