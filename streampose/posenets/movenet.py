"""MoveNet SinglePose: one person per frame, followed by Google's cropping algorithm.

From the MoveNet tutorial (tensorflow.org/hub/tutorials/movenet, "cropping algorithm"): the first
frame (and any frame after the person was lost) is the whole image padded to a square; each
next frame is cropped to a square around the current keypoints, centred on the hip midpoint,
half as wide as the larger of 1.9 x the torso's extent and 1.2 x the body's extent (joints
scoring over MIN_CROP_SCORE), so the person fills the 192x192 input. Without a visible torso
(a shoulder and a hip) or when the square would outgrow the image, the next frame is whole again.

Crops are squares (x1, y1, side) in frame pixels and may reach beyond the image: the outside is
black, as tf.image.crop_and_resize fills it.
"""

from __future__ import annotations

import cv2
import numpy as np

from streampose.frame import KEYPOINT_INDEX

MIN_CROP_SCORE = 0.2
TORSO_EXPANSION = 1.9
BODY_EXPANSION = 1.2
TORSO = np.array([KEYPOINT_INDEX[n] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")])
HIPS = np.array([KEYPOINT_INDEX["left_hip"], KEYPOINT_INDEX["right_hip"]])
SHOULDERS = np.array([KEYPOINT_INDEX["left_shoulder"], KEYPOINT_INDEX["right_shoulder"]])


def whole_image(width: int, height: int) -> np.ndarray:
    """(3,) float32 x1, y1, side: the image padded to a square, centred."""
    side = max(width, height)
    return np.array([(width - side) / 2, (height - side) / 2, side], np.float32)


def next_crop(keypoints: np.ndarray, width: int, height: int) -> np.ndarray:
    """The crop (x1, y1, side) for the next frame from this frame's keypoints (17, 3) (x, y in
    frame pixels, score)."""
    score = keypoints[:, 2]
    if not (score[HIPS] > MIN_CROP_SCORE).any() or not (score[SHOULDERS] > MIN_CROP_SCORE).any():
        return whole_image(width, height)
    centre = keypoints[HIPS, :2].mean(axis=0)
    torso = np.abs(keypoints[TORSO, :2] - centre).max(axis=0)
    body = np.abs(keypoints[score > MIN_CROP_SCORE, :2] - centre).max(axis=0)
    half = max(*(torso * TORSO_EXPANSION), *(body * BODY_EXPANSION))
    # Never wider than the farthest image edge from the centre.
    half = min(half, max(centre[0], width - centre[0], centre[1], height - centre[1]))
    if half > max(width, height) / 2:
        return whole_image(width, height)
    return np.array([centre[0] - half, centre[1] - half, 2 * half], np.float32)


def crop_input(image_bgr: np.ndarray, crop: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB: the crop resized to the network input, black outside the image."""
    x1, y1, side = (float(v) for v in crop)
    scale = size / side
    to_input = np.array([[scale, 0, -x1 * scale], [0, scale, -y1 * scale]], np.float32)
    warped = cv2.warpAffine(image_bgr, to_input, (size, size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return cv2.cvtColor(warped, cv2.COLOR_BGR2RGB)


def decode(output: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """Keypoints (17, 3) x, y in frame pixels and score, from the network output (17, 3)
    (y, x normalised to the crop, score)."""
    x1, y1, side = crop
    keypoints = np.empty((len(output), 3), np.float32)
    keypoints[:, 0] = x1 + output[:, 1] * side
    keypoints[:, 1] = y1 + output[:, 0] * side
    keypoints[:, 2] = output[:, 2]
    return keypoints
