"""Where a training crop comes from: the pipeline's crop of the person's box, randomly zoomed,
rotated, mirrored or cut to half the body; and colour changes of the crop.

Every crop starts as the keypoints stage would cut it (streampose.vision.topdown.crop_affines),
so the network learns on the framing it will see. The augmentations are composed onto that
affine in crop pixels, about the crop's centre (W/2, H/2), which the pipeline maps to the
region's centre; with no augmentation the matrix is the pipeline's exactly. The same matrix
moves the image and the joints.
"""

from __future__ import annotations

import cv2
import numpy as np

from streampose.vision import topdown
from trainers.keypoint.config import AugmentConfig, KeypointSet

# The half-body region grows the joints' box by this fraction (PaddleDetection: 1.5x).
HALF_BODY_EXPAND = 0.5


def random_affine(box: np.ndarray, joints: np.ndarray, input_size: tuple[int, int], expand_ratio: float,
                  augment: AugmentConfig, keypoints: KeypointSet, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """A (2, 3) frame -> crop affine for training, and whether it mirrors.

    box: (4,) x1, y1, x2, y2; joints: (K, 3) x, y, visibility, frame pixels.
    """
    labelled = joints[:, 2] > 0
    crop_box, expand = box, expand_ratio
    if labelled.sum() >= augment.half_body_min_joints and rng.random() < augment.half_body:
        upper = np.zeros(len(joints), bool)
        upper[list(keypoints.upper_body)] = True
        halves = [labelled & upper, labelled & ~upper]
        if rng.random() < 0.5:
            halves.reverse()
        chosen = next((h for h in halves if h.sum() >= 2), None)
        if chosen is not None:
            points = joints[chosen, :2]
            crop_box, expand = np.concatenate([points.min(0), points.max(0)]), HALF_BODY_EXPAND
    _, center, scale = topdown.crop_affines(crop_box[None], expand, input_size)  # the stage's crop, then zoomed
    zoom = rng.uniform(1 - augment.scale, 1 + augment.scale)
    matrix = np.vstack([topdown.affine_matrices(center, scale * zoom, input_size)[0], (0, 0, 1)])
    middle = (input_size[0] / 2, input_size[1] / 2)
    if rng.random() < augment.rotate_prob:
        angle = rng.uniform(-augment.rotate_deg, augment.rotate_deg)
        matrix = np.vstack([cv2.getRotationMatrix2D(middle, angle, 1.0), (0, 0, 1)]) @ matrix
    flipped = bool(rng.random() < augment.flip)
    if flipped:  # mirror about the crop's vertical centre line: x -> W - x
        matrix = np.array([[-1.0, 0.0, input_size[0]], [0.0, 1.0, 0.0], [0, 0, 1]]) @ matrix
    return matrix[:2], flipped


def jitter_colour(crops: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """(N, H, W, 3) uint8 crops with brightness, contrast and saturation each scaled by a random
    factor in [1 - strength, 1 + strength], per crop."""
    if strength <= 0:
        return crops
    n = len(crops)
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, (3, n, 1, 1, 1)).astype(np.float32)
    image = crops.astype(np.float32) * brightness
    mean = image.mean(axis=(1, 2, 3), keepdims=True)
    image = (image - mean) * contrast + mean
    grey = image.mean(axis=3, keepdims=True)
    image = (image - grey) * saturation + grey
    return np.clip(image, 0, 255).astype(np.uint8)
