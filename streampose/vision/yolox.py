"""YOLOX raw outputs -> boxes and person scores in network-input pixels.

The output (B, N, 5 + C) lists the cells of strides 8, 16, 32 in order, each level
row-major: x, y offsets in cells, log width and height in cells, objectness, class
scores (sigmoid already applied). Centre = (offset + cell index) * stride, size =
exp(log size) * stride, score = objectness * class score.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

STRIDES = (8, 16, 32)
OUTPUT_FORM = "yolox"


class YoloxOutputError(ValueError):
    """The network's output is not a YOLOX head output for its input size."""


def decode(output: np.ndarray, input_hw: tuple[int, int], person_class: int,
           strides: Sequence[int] = STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """(B, N, 5 + C) -> boxes (B, N, 4) x1, y1, x2, y2 in input pixels and person scores (B, N)."""
    cells = _cells(tuple(input_hw), tuple(strides))
    if output.ndim != 3 or output.shape[1] != len(cells) or output.shape[2] <= 5 + person_class:
        raise YoloxOutputError(f"expected YOLOX output (B, {len(cells)}, 5 + classes) for a {input_hw[0]}x"
                               f"{input_hw[1]} input, got {output.shape}")
    stride = cells[:, 2:3]
    centre = (output[..., 0:2] + cells[:, :2]) * stride
    half = np.exp(output[..., 2:4]) * stride / 2
    boxes = np.concatenate([centre - half, centre + half], axis=-1)
    scores = output[..., 4] * output[..., 5 + person_class]
    return boxes, scores


@lru_cache(maxsize=8)
def _cells(input_hw: tuple[int, int], strides: tuple[int, ...]) -> np.ndarray:
    """(N, 3) float32 col, row, stride of every output cell, in output order; read-only, shared
    by every batch of this input size."""
    grids = []
    for stride in strides:
        rows, cols = input_hw[0] // stride, input_hw[1] // stride
        y, x = np.mgrid[0:rows, 0:cols]
        grids.append(np.stack([x.ravel(), y.ravel(), np.full(rows * cols, stride)], axis=1))
    cells = np.concatenate(grids).astype(np.float32)
    cells.flags.writeable = False
    return cells
