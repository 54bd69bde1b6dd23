"""Keypoint heatmaps -> peak positions (heatmap pixels) and confidences, for all persons
and joints at once.

Numerics of PaddleDetection's HRNetPostProcess (deploy/python/keypoint_postprocess.py):

- Peak: the first arg-max of each map; confidence = the map's maximum; a map whose
  maximum is <= 0 puts its peak at (0, 0).
- DARK refinement (use_dark): blur each map with OpenCV's 3x3 Gaussian (sigma 0: the kernel
  [1, 2, 1] / 4 per axis) with zeros outside the map, rescale it to its original
  maximum, take log(max(map, 1e-10)), then move the peak by one Newton step -H^-1 g, with
  g and H from central differences (second derivatives over +-2 pixels, the mixed one over
  the diagonal neighbours), where the peak is at least 2 pixels from every edge and H is
  invertible.
- Without DARK: a quarter pixel towards the higher neighbour on each axis, where
  1 < x < w - 1 and 1 < y < h - 1 (PaddleDetection's bounds).
- Flip test (PaddleDetection's TopDownHRNet): the mirrored crop's maps are mirrored back,
  left/right joints swapped, shifted one pixel right, then averaged with the plain maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# COCO left/right joint pairs (eyes, ears, shoulders, elbows, wrists, hips, knees, ankles).
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))


def flip_order(num_joints: int, flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS) -> np.ndarray:
    """(K,) joint permutation of a mirrored person: joint j of the mirror is joint order[j] of
    the original (left and right of each pair swapped, the others kept). Pairs are disjoint."""
    pairs = np.asarray(flip_pairs, np.intp).reshape(-1, 2)
    order = np.arange(num_joints)
    order[pairs[:, 0]], order[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
    return order


def flip_back(flipped: np.ndarray, flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS) -> np.ndarray:
    """Heatmaps (N, K, h, w) of mirrored crops -> heatmaps aligned with the plain crops."""
    aligned = flipped[:, flip_order(flipped.shape[1], flip_pairs), :, ::-1]
    shifted = np.empty_like(aligned)
    shifted[..., 1:] = aligned[..., :-1]
    shifted[..., 0] = aligned[..., 0]
    return shifted


def decode_heatmaps(heatmaps: np.ndarray, use_dark: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (N, K, h, w) -> (peaks (N, K, 2) x, y in heatmap pixels, float64;
    confidences (N, K) float32, the maps' maxima)."""
    n, k, height, width = heatmaps.shape
    if n == 0:
        return np.zeros((0, k, 2)), np.zeros((0, k), np.float32)
    flat = heatmaps.reshape(n, k, -1)
    index = flat.argmax(axis=2)
    maxima = np.take_along_axis(flat, index[..., None], axis=2)[..., 0]
    positive = maxima > 0
    px = np.where(positive, index % width, 0)
    py = np.where(positive, index // width, 0)
    peaks = np.stack([px, py], axis=-1).astype(np.float64)
    peaks += _dark_offsets(heatmaps, maxima, px, py) if use_dark else _quarter_offsets(heatmaps, px, py)
    return peaks, maxima.astype(np.float32)


def _quarter_offsets(heatmaps: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """(N, K, 2) quarter-pixel steps towards the higher neighbour."""
    n, k, height, width = heatmaps.shape
    inside = (px > 1) & (px < width - 1) & (py > 1) & (py < height - 1)
    x = np.clip(px, 1, width - 2)
    y = np.clip(py, 1, height - 2)
    person = np.arange(n)[:, None]
    joint = np.arange(k)[None, :]
    step_x = np.sign(heatmaps[person, joint, y, x + 1] - heatmaps[person, joint, y, x - 1])
    step_y = np.sign(heatmaps[person, joint, y + 1, x] - heatmaps[person, joint, y - 1, x])
    return np.where(inside[..., None], 0.25 * np.stack([step_x, step_y], axis=-1), 0.0)


# (dy, dx) of the samples the derivatives need, in the order _dark_offsets unpacks them.
_TAPS = np.array([(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0), (0, 2), (0, -2), (2, 0), (-2, 0),
                  (1, 1), (-1, 1), (1, -1), (-1, -1)])


def _dark_offsets(heatmaps: np.ndarray, maxima: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """(N, K, 2) Newton steps on the smoothed log-heatmap at integer peaks (px, py)."""
    n, k, height, width = heatmaps.shape
    blurred = _blur(heatmaps)
    blurred_max = blurred.reshape(n, k, -1).max(axis=2)
    ratio = np.divide(maxima, blurred_max, out=np.ones_like(maxima), where=blurred_max != 0)

    inside = (px > 1) & (px < width - 2) & (py > 1) & (py < height - 2)
    x = np.clip(px, 2, width - 3)[..., None] + _TAPS[:, 1]
    y = np.clip(py, 2, height - 3)[..., None] + _TAPS[:, 0]
    taps = blurred[np.arange(n)[:, None, None], np.arange(k)[None, :, None], y, x] * ratio[..., None]
    log = np.log(np.maximum(taps, 1e-10)).astype(np.float64)        # (N, K, taps)
    centre, right, left, down, up, right2, left2, down2, up2, down_right, up_right, down_left, up_left = \
        np.moveaxis(log, -1, 0)
    dx = 0.5 * (right - left)
    dy = 0.5 * (down - up)
    dxx = 0.25 * (right2 - 2 * centre + left2)
    dyy = 0.25 * (down2 - 2 * centre + up2)
    dxy = 0.25 * (down_right - up_right - down_left + up_left)
    det = dxx * dyy - dxy ** 2
    usable = inside & (det != 0)
    safe_det = np.where(usable, det, 1.0)
    offset_x = -(dyy * dx - dxy * dy) / safe_det
    offset_y = -(dxx * dy - dxy * dx) / safe_det
    return np.where(usable[..., None], np.stack([offset_x, offset_y], axis=-1), 0.0)


def _blur(heatmaps: np.ndarray) -> np.ndarray:
    """OpenCV's 3x3 Gaussian of each map with zeros around it: the maps are stacked, each
    framed by a zero border, into one image, so one call blurs them all."""
    n, k, height, width = heatmaps.shape
    framed = np.zeros((n * k, height + 2, width + 2), np.float32)
    framed[:, 1:-1, 1:-1] = heatmaps.reshape(n * k, height, width)
    blurred = cv2.GaussianBlur(framed.reshape(-1, width + 2), (3, 3), 0)
    return blurred.reshape(n, k, height + 2, width + 2)[:, :, 1:-1, 1:-1]
