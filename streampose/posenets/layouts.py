"""Keypoint layouts other than COCO-17, and their conversion to COCO-17: the one place.

A layout is the list of joint names a network outputs, in its order. Everything downstream of a
pose stage (tracking with OKS, smoothing, lifting, plugins, drawing, messages) speaks COCO-17
(streampose.frame.COCO_KEYPOINTS), so a network's keypoints are converted here, by name: each
COCO joint is taken from the layout joint of the same name (ALIASES maps names that differ).
A joint a layout lacks gets confidence 0. A new network with a heatmap + grouping head
(HigherHRNet, another OpenPose export) plugs in by adding its layout to LAYOUTS.
"""

from __future__ import annotations

import numpy as np

from streampose.frame import COCO_KEYPOINTS

# CMU OpenPose COCO-18 (also Intel's human-pose-estimation-0001): COCO-17 plus a neck, in another
# order. The neck is dropped: COCO has none, and it is the shoulders' midpoint.
OPENPOSE_18 = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)

# MediaPipe BlazePose, 33 landmarks (the landmark network outputs 39: these 33, then 6 auxiliary
# ROI points that are not joints). COCO's eyes are BlazePose's eye centres; its hands and feet
# points beyond the wrists and ankles are dropped.
BLAZEPOSE_33 = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
    "left_foot_index", "right_foot_index",
)

LAYOUTS: dict[str, tuple[str, ...]] = {
    "coco17": COCO_KEYPOINTS,
    "openpose18": OPENPOSE_18,
    "blazepose33": BLAZEPOSE_33,
}

# COCO joint name -> the name a layout gives it, where they differ (none so far).
ALIASES: dict[str, str] = {}


def coco_rows(layout: tuple[str, ...]) -> np.ndarray:
    """(17,) int64: for each COCO joint, its row in `layout`, or -1 where the layout lacks it."""
    index = {name: i for i, name in enumerate(layout)}
    return np.array([index.get(ALIASES.get(name, name), -1) for name in COCO_KEYPOINTS], np.int64)


def to_coco(keypoints: np.ndarray, layout: tuple[str, ...]) -> np.ndarray:
    """Keypoints (..., len(layout), C) in `layout` -> (..., 17, C) in COCO order; a joint the
    layout lacks is all zeros (confidence 0)."""
    rows = coco_rows(layout)
    if keypoints.shape[-2] < len(layout):
        raise ValueError(f"expected at least {len(layout)} keypoints, got {keypoints.shape[-2]}")
    out = np.take(keypoints, np.maximum(rows, 0), axis=-2)
    out[..., rows < 0, :] = 0
    return out
