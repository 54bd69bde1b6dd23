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


# (dy, dx) of the samples the derivatives need, and the weights that make the derivatives
# (columns dx, dy, dxx, dyy, dxy) from their log values, in one product.
_TAPS = np.array([(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0), (0, 2), (0, -2), (2, 0), (-2, 0),
                  (1, 1), (-1, 1), (1, -1), (-1, -1)])
_DERIVATIVES = np.array([
    # dx    dy    dxx    dyy   dxy
    [0.0, 0.0, -0.5, -0.5, 0.0],     # centre
    [0.5, 0.0, 0.0, 0.0, 0.0],       # right
    [-0.5, 0.0, 0.0, 0.0, 0.0],      # left
    [0.0, 0.5, 0.0, 0.0, 0.0],       # down
    [0.0, -0.5, 0.0, 0.0, 0.0],      # up
    [0.0, 0.0, 0.25, 0.0, 0.0],      # right 2
    [0.0, 0.0, 0.25, 0.0, 0.0],      # left 2
    [0.0, 0.0, 0.0, 0.25, 0.0],      # down 2
    [0.0, 0.0, 0.0, 0.25, 0.0],      # up 2
    [0.0, 0.0, 0.0, 0.0, 0.25],      # down right
    [0.0, 0.0, 0.0, 0.0, -0.25],     # up right
    [0.0, 0.0, 0.0, 0.0, -0.25],     # down left
    [0.0, 0.0, 0.0, 0.0, 0.25],      # up left
])


def _dark_offsets(heatmaps: np.ndarray, maxima: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """(N, K, 2) Newton steps on the smoothed log-heatmap at integer peaks (px, py).

    The taps are read from the blurred maps with one flat index and the derivatives made with
    one matrix product: the same values (bit for bit on 24 x 17 synthetic maps with peaks inside,
    at the edges, zero and negative) in fewer numpy calls on tiny arrays, which are most of the
    cost: 0.14 -> 0.11 ms of CPU for one person's 17 joints (medians of 30 x 200 calls, old and
    new alternating)."""
    n, k, height, width = heatmaps.shape
    framed = _blur_framed(heatmaps)                                          # (N * K, h + 2, w + 2)
    blurred_max = framed[:, 1:-1, 1:-1].max(axis=(1, 2)).reshape(n, k)
    ratio = np.divide(maxima, blurred_max, out=np.ones_like(maxima), where=blurred_max != 0)

    inside = (px > 1) & (px < width - 2) & (py > 1) & (py < height - 2)
    row_length, map_size = width + 2, (height + 2) * (width + 2)
    # np.maximum/minimum: np.clip's own overhead was a fifth of this function on 17 joints
    centre = (np.arange(n * k) * map_size + (np.minimum(np.maximum(py, 2), height - 3).ravel() + 1) * row_length
              + np.minimum(np.maximum(px, 2), width - 3).ravel() + 1)
    taps = framed.reshape(-1)[centre[:, None] + _TAPS[:, 0] * row_length + _TAPS[:, 1]]    # (N * K, taps)
    taps *= ratio.reshape(-1, 1)
    log = np.log(np.maximum(taps, 1e-10)).astype(np.float64)
    dx, dy, dxx, dyy, dxy = (log @ _DERIVATIVES).T.reshape(5, n, k)
    det = dxx * dyy - dxy ** 2
    usable = inside & (det != 0)
    safe_det = np.where(usable, det, 1.0)
    offsets = np.empty((n, k, 2))
    offsets[..., 0] = (dxy * dy - dyy * dx) / safe_det
    offsets[..., 1] = (dxy * dx - dxx * dy) / safe_det
    offsets[~usable] = 0.0
    return offsets


def _blur_framed(heatmaps: np.ndarray) -> np.ndarray:
    """The maps stacked, each framed by a zero border, into one image, so one call blurs them
    all: (N * K, h + 2, w + 2), the blurred map i at [i, 1:-1, 1:-1]."""
    n, k, height, width = heatmaps.shape
    framed = np.zeros((n * k, height + 2, width + 2), np.float32)
    framed[:, 1:-1, 1:-1] = heatmaps.reshape(n * k, height, width)
    return cv2.GaussianBlur(framed.reshape(-1, width + 2), (3, 3), 0).reshape(n * k, height + 2, width + 2)
