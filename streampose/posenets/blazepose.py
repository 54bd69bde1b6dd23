"""MediaPipe BlazePose: a person detector, a rotated square region around the body, and a
landmark network that gives 33 landmarks in the image and in metres (world landmarks).

As MediaPipe's pose graph runs it (mediapipe/modules/pose_detection, pose_landmark):

- Detector: the frame letterboxed to 224x224 RGB in [-1, 1]; 2254 SSD anchors (strides 8, 16
  and three layers of 32, two anchors per layer and cell, fixed size), each regressing a box and
  4 alignment keypoints, offsets in input pixels from the anchor centre; scores are logits.
- Region: centred on alignment keypoint 0 (mid-hip), side 2 x 1.25 = 2.5 x |kp1 - kp0|, turned so
  that kp0 -> kp1 points up in the crop. On the next frame the region comes from the landmarks'
  two auxiliary points (33: mid-hip, 34) the same way, so the detector runs only when the person
  was lost (presence below a threshold).
- Landmarks: the region warped to 256x256 RGB in [0, 1]; 39 x (x, y, z, visibility, presence)
  with x, y in crop pixels (visibility and presence are logits), a presence probability for the
  whole pose, and 39 x 3 world landmarks: metres, origin between the hips, in the crop's axes (turned
  back by the region's rotation here, so x right, y down, z away from the camera as in the image).

Angles are radians; a region's rotation r maps an offset d from the crop's centre (crop pixels,
y down) to the frame as R(r) d, R = [[cos, -sin], [sin, cos]] (clockwise on screen for r > 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DETECTOR_SIZE = 224
LANDMARK_SIZE = 256
# Anchor layout of pose_detection.tflite (ssd_anchors options of MediaPipe's pose detection graph).
ANCHOR_STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = (2, 2, 6)
REGION_SCALE = 1.25
# MediaPipe's thresholds: detections scoring 0.5, a tracked pose with presence 0.5.
MIN_DETECTION_SCORE = 0.5
MIN_PRESENCE = 0.5
LANDMARKS = 33   # real landmarks; the network outputs 39 (the last 6 are region helpers)
HIP_CENTRE, BODY_TOP = 33, 34


def anchors() -> np.ndarray:
    """(2254, 2) float32 anchor centres x, y in [0, 1] of the detector input."""
    centres = []
    for stride, count in zip(ANCHOR_STRIDES, ANCHORS_PER_CELL):
        cells = int(np.ceil(DETECTOR_SIZE / stride))
        y, x = np.mgrid[0:cells, 0:cells]
        grid = (np.stack([x.ravel(), y.ravel()], axis=1) + 0.5) / cells
        centres.append(np.repeat(grid, count, axis=0))
    return np.concatenate(centres).astype(np.float32)


def letterbox(image_bgr: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """The detector input (224, 224, 3) float32 RGB in [-1, 1], the frame scaled by `scale` and
    centred with black borders, `offset` (2,) the frame's top-left in input pixels."""
    height, width = image_bgr.shape[:2]
    scale = DETECTOR_SIZE / max(height, width)
    resized = cv2.resize(image_bgr, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    offset = np.array([(DETECTOR_SIZE - resized.shape[1]) // 2, (DETECTOR_SIZE - resized.shape[0]) // 2])
    canvas = np.zeros((DETECTOR_SIZE, DETECTOR_SIZE, 3), np.uint8)
    canvas[offset[1]:offset[1] + resized.shape[0], offset[0]:offset[0] + resized.shape[1]] = resized
    tensor = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1
    return tensor, scale, offset


@dataclass(frozen=True)
class Region:
    """A rotated square of the frame: centre (x, y) and side in frame pixels, rotation radians."""

    centre: np.ndarray
    side: float
    rotation: float

    @classmethod
    def from_points(cls, centre: np.ndarray, top: np.ndarray) -> Region:
        """The region around a body from its mid-hip `centre` and the point `top` that fixes its
        size and direction (frame pixels)."""
        towards = top - centre
        rotation = np.pi / 2 - np.arctan2(-towards[1], towards[0])
        rotation = (rotation + np.pi) % (2 * np.pi) - np.pi
        return cls(centre=centre.astype(np.float64), side=float(2 * REGION_SCALE * np.linalg.norm(towards)),
                   rotation=float(rotation))

    def to_frame(self, size: int) -> np.ndarray:
        """(2, 3) affine matrix from crop pixels (0..size) to frame pixels."""
        cos, sin = np.cos(self.rotation), np.sin(self.rotation)
        turn = np.array([[cos, -sin], [sin, cos]]) * (self.side / size)
        return np.hstack([turn, (self.centre - turn @ np.array([size / 2, size / 2]))[:, None]])

    def crop(self, image_bgr: np.ndarray, size: int = LANDMARK_SIZE) -> np.ndarray:
        """The landmark network input (size, size, 3) float32 RGB in [0, 1]."""
        warped = cv2.warpAffine(image_bgr, cv2.invertAffineTransform(self.to_frame(size)), (size, size),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return cv2.cvtColor(warped, cv2.COLOR_BGR2RGB).astype(np.float32) / 255


def best_detection(boxes: np.ndarray, logits: np.ndarray, anchor_centres: np.ndarray, scale: float,
                   offset: np.ndarray) -> tuple[Region, float] | None:
    """The most confident person's region from the detector outputs (2254, 12) and (2254, 1),
    or None when none scores MIN_DETECTION_SCORE. One person: MediaPipe Pose tracks one."""
    scores = sigmoid(logits[:, 0])
    best = int(np.argmax(scores))
    if scores[best] < MIN_DETECTION_SCORE:
        return None
    centre = anchor_centres[best] * DETECTOR_SIZE
    points = boxes[best, 4:8].reshape(2, 2) + centre            # alignment keypoints 0 and 1, input px
    in_frame = (points - offset) / scale
    return Region.from_points(in_frame[0], in_frame[1]), float(scores[best])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-np.clip(np.asarray(x, np.float64), -100, 100)))).astype(np.float32)


@dataclass
class Landmarks:
    """One person's landmarks.

    image:    (39, 3) float32 x, y in frame pixels, visibility 0..1.
    world:    (39, 3) float32 metres, origin between the hips, x right, y down, z away.
    presence: 0..1, that a person is in the region.
    next_region: the region for the next frame, from the auxiliary landmarks.
    """

    image: np.ndarray
    world: np.ndarray
    presence: float
    next_region: Region


def decode_landmarks(raw: np.ndarray, world: np.ndarray, presence: float, region: Region) -> Landmarks:
    """From the landmark network's outputs (195,), (117,) and its pose presence (a probability
    already: the network ends in a sigmoid there)."""
    points = raw.reshape(-1, 5)
    to_frame = region.to_frame(LANDMARK_SIZE)
    image = np.empty((len(points), 3), np.float32)
    image[:, :2] = points[:, :2] @ to_frame[:, :2].T + to_frame[:, 2]
    image[:, 2] = sigmoid(points[:, 3])
    cos, sin = np.cos(region.rotation), np.sin(region.rotation)
    xyz = world.reshape(-1, 3).astype(np.float32).copy()
    xyz[:, :2] = xyz[:, :2] @ np.array([[cos, -sin], [sin, cos]], np.float32).T
    return Landmarks(image=image, world=xyz, presence=float(np.clip(presence, 0, 1)),
                     next_region=Region.from_points(image[HIP_CENTRE, :2].astype(np.float64),
                                                    image[BODY_TOP, :2].astype(np.float64)))
