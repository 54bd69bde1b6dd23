"""Training targets: one Gaussian heatmap per joint, centred at the joint's exact sub-pixel
position, and a weight per joint.

Unbiased encoding (Zhang et al., "Distribution-Aware Coordinate Representation", DARK, 2020;
PaddleDetection's ToHeatmapsTopDown_DARK): the Gaussian's centre is not rounded to the grid,
so the log-heatmap is an exact quadratic around the joint and the stage's DARK decoder
(streampose.vision.heatmap.decode_heatmaps) recovers the position to a small fraction of a
heatmap pixel. Positions are in heatmap pixels with the convention of streampose.vision.topdown:
pixel (i, j) samples the point (i, j), no half-pixel shift.
"""

from __future__ import annotations

import numpy as np


def encode_heatmaps(points: np.ndarray, labelled: np.ndarray, heatmap_size: tuple[int, int],
                    sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Targets for joints at `points`.

    points:       (N, K, 2) x, y in heatmap pixels.
    labelled:     (N, K) bool, joints with a position (COCO visibility > 0).
    heatmap_size: (width, height).
    sigma:        the Gaussian's standard deviation, heatmap pixels.
    Returns heatmaps (N, K, h, w) float32 in 0..1 and weights (N, K) float32: 1 where the joint
    is labelled and its Gaussian reaches the map (centre within 3 sigma of it: DARK's rule), else 0
    (its heatmap is then all zeros).
    """
    width, height = heatmap_size
    points = np.asarray(points, np.float64)
    reach = 3 * sigma
    on_map = ((points[..., 0] >= -reach) & (points[..., 0] <= width - 1 + reach)
              & (points[..., 1] >= -reach) & (points[..., 1] <= height - 1 + reach))
    weights = (np.asarray(labelled, bool) & on_map).astype(np.float32)
    dx2 = (np.arange(width) - points[..., 0, None]) ** 2     # (N, K, w)
    dy2 = (np.arange(height) - points[..., 1, None]) ** 2    # (N, K, h)
    heatmaps = np.exp(-(dy2[..., :, None] + dx2[..., None, :]) / (2 * sigma ** 2)).astype(np.float32)
    heatmaps *= weights[..., None, None]
    return heatmaps, weights
