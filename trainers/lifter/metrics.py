"""3D pose errors, vectorised over a batch of poses.

MPJPE: mean distance between predicted and true joints after aligning the roots (protocol 1 of
Human3.6M). PA-MPJPE: the same after the best similarity transform (rotation, scale,
translation) of the prediction onto the truth (Procrustes; protocol 2).
"""

from __future__ import annotations

import numpy as np

from streampose.geometry.lifting import root_of


def mpjpe(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(N,) mean joint distance of root-aligned (N, K, 3) poses, in their units."""
    predicted = predicted - root_of(predicted)[:, None]
    true = true - root_of(true)[:, None]
    return np.linalg.norm(predicted - true, axis=-1).mean(-1)


def pa_mpjpe(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(N,) mean joint distance after a similarity alignment of each prediction onto the truth."""
    p = predicted - predicted.mean(1, keepdims=True)
    t = true - true.mean(1, keepdims=True)
    u, s, vt = np.linalg.svd(np.einsum("nki,nkj->nij", p, t))
    # The rotation maximising trace(R^T P^T T), without reflections.
    d = np.sign(np.linalg.det(u @ vt))
    s[:, -1] *= d
    u[:, :, -1] *= d[:, None]
    rotation = u @ vt                                              # p @ rotation ~ t
    scale = s.sum(1) / (p ** 2).sum((1, 2))
    aligned = scale[:, None, None] * p @ rotation
    return np.linalg.norm(aligned - t, axis=-1).mean(-1)
