"""Matching detections to tracks: similarity matrices and the optimal assignment.

Every matrix is (tracks, detections). Boxes are x1, y1, x2, y2 in pixels; keypoints
(K, 3) x, y in pixels and confidence 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

# COCO's per-keypoint OKS constants (nose, eyes, ears, shoulders, elbows, wrists, hips,
# knees, ankles): how far a joint may stray, relative to the person's size, and still match.
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                        .87, .87, .89, .89]) / 10.0
# Joints less confident than this take no part in OKS.
OKS_MIN_CONFIDENCE = 0.3


@dataclass
class Matches:
    """The outcome of one assignment.

    pairs:              (M, 2) int, rows (track index, detection index).
    unmatched_tracks:   (T - M,) int, ascending.
    unmatched_detections: (D - M,) int, ascending.
    """

    pairs: np.ndarray
    unmatched_tracks: np.ndarray
    unmatched_detections: np.ndarray


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of boxes a (N, 4) and b (M, 4)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    sides = np.maximum(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0)
    intersection = sides[..., 0] * sides[..., 1]
    size_a = np.maximum(a[:, 2:] - a[:, :2], 0)
    size_b = np.maximum(b[:, 2:] - b[:, :2], 0)
    union = (size_a[:, 0] * size_a[:, 1])[:, None] + size_b[:, 0] * size_b[:, 1] - intersection
    return np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)


def oks_matrix(a: np.ndarray, b: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) object keypoint similarity of poses a (N, K, 3) and b (M, K, 3);
    `areas` (N,) is the size of each pose in a, pixels squared.

    Pairs with no joint confident in both get NaN: OKS does not know them.
    """
    if a.shape[1] != len(COCO_SIGMAS) or b.shape[1] != len(COCO_SIGMAS):
        raise ValueError(f"OKS needs {len(COCO_SIGMAS)} COCO keypoints per person, got "
                         f"{a.shape[1]} and {b.shape[1]}")
    squared = np.square(a[:, None, :, :2] - b[None, :, :, :2]).sum(axis=3)            # (N, M, K)
    spread = 2 * np.square(2 * COCO_SIGMAS) * np.maximum(areas, 1.0)[:, None, None]  # COCO's 2 s^2 k^2
    similarity = np.exp(-squared / spread)
    both = (a[:, None, :, 2] >= OKS_MIN_CONFIDENCE) & (b[None, :, :, 2] >= OKS_MIN_CONFIDENCE)
    counted = both.sum(axis=2)
    total = np.where(both, similarity, 0.0).sum(axis=2)
    return np.divide(total, counted, out=np.full(total.shape, np.nan), where=counted > 0)


def match(gain: np.ndarray, allowed: np.ndarray) -> Matches:
    """The assignment of tracks (rows) to detections (columns) with the greatest total
    `gain`, using only pairs where `allowed` (same shape, bool) is true. A pair left
    unmatched gains nothing, so allowed gains should be positive."""
    # Most calls of a frame have nothing to match, or one track and one detection (a tracker
    # makes three a frame): answered without the assignment solver and its bookkeeping.
    if not allowed.any():
        return Matches(pairs=np.zeros((0, 2), np.int64), unmatched_tracks=np.arange(gain.shape[0]),
                       unmatched_detections=np.arange(gain.shape[1]))
    if allowed.shape == (1, 1):
        return Matches(pairs=np.zeros((1, 2), np.int64), unmatched_tracks=np.zeros(0, np.int64),
                       unmatched_detections=np.zeros(0, np.int64))
    rows, cols = linear_sum_assignment(np.where(allowed, gain, 0.0), maximize=True)
    keep = allowed[rows, cols]
    pairs = np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64)
    return Matches(pairs=pairs, unmatched_tracks=_others(pairs[:, 0], gain.shape[0]),
                   unmatched_detections=_others(pairs[:, 1], gain.shape[1]))


def _others(chosen: np.ndarray, count: int) -> np.ndarray:
    left = np.ones(count, bool)
    left[chosen] = False
    return np.flatnonzero(left)
