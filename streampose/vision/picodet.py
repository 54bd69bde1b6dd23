"""PP-PicoDet outputs -> person detections, for each form the network may be exported in.

- raw heads (exported without post-processing, e.g. picodet_s_192_pedestrian): per FPN
  level a score map (B, HW, C) (sigmoid applied) and a box-distribution map
  (B, HW, 4 * (R + 1)); all score maps come first, as PaddleDetection lists them. Each
  side's distance is the expectation of a softmax over R + 1 bins times the level's
  stride, measured from the cell centre ((i + 0.5) * stride) as left, top, right, bottom.
- decoded (post-processing without NMS, arch GFL, e.g. *_lcnet_pedestrian_ov):
  boxes (B, N, 4) x1, y1, x2, y2 in input pixels and scores (B, C, N).
- NMS in the graph: rows (M, 6) class, score, x1, y1, x2, y2 already in frame pixels
  (the graph divides by its `scale_factor` input) and a count per frame (B,).

The first two end in `select_persons` (threshold, NMS, clip, rescale). PaddleDetection
also keeps each level's nms_top_k best cells before NMS; that cannot drop any of
the `candidates` best boxes NMS looks at while nms_top_k >= candidates, as in
every exported config, so it is not repeated here.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from streampose.vision.detections import Detections, clip_boxes

RAW_HEADS = "raw heads"
DECODED = "decoded"
NMS_IN_GRAPH = "nms in graph"


class OutputFormError(ValueError):
    """The network's outputs match no PicoDet export form."""


def output_form(shapes: Sequence[Sequence[int]], num_levels: int) -> str:
    """Which export form a PicoDet network with these output shapes is (dynamic dims: -1)."""
    ranks = [len(shape) for shape in shapes]
    if len(shapes) == 2 * num_levels and all(rank == 3 for rank in ranks):
        return RAW_HEADS
    if len(shapes) == 2 and ranks == [3, 3] and (shapes[0][-1] == 4 or shapes[1][-1] == 4):
        return DECODED
    if len(shapes) == 2 and sorted(ranks) == [1, 2]:
        return NMS_IN_GRAPH
    raise OutputFormError(
        f"PicoDet outputs of shapes {[list(s) for s in shapes]} match no known export form: expected "
        f"{2 * num_levels} maps (B, HW, C|32) for {num_levels} FPN levels (raw heads), boxes (B, N, 4) with "
        f"scores (B, C, N) (post-processed without NMS), or rows (M, 6) with counts (B,) (NMS in the graph)")


def decode_raw_heads(outputs: Sequence[np.ndarray], strides: Sequence[int],
                     input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Score and distribution maps of all levels -> boxes (B, N, 4) in input pixels and
    scores (B, N, C), levels in order."""
    scores = raw_head_scores(outputs, strides, input_hw)
    centre, cell_stride = _cell_centres(tuple(input_hw), tuple(strides))
    logits = np.concatenate(outputs[len(strides):], axis=1)                 # (B, N, 4 * bins)
    return _boxes(logits, centre, cell_stride), scores


def raw_head_scores(outputs: Sequence[np.ndarray], strides: Sequence[int], input_hw: tuple[int, int]) -> np.ndarray:
    """The score maps of all levels -> scores (B, N, C), levels in order (checked against the input size)."""
    num_levels = len(strides)
    if len(outputs) != 2 * num_levels:
        raise OutputFormError(f"expected {2 * num_levels} head outputs for strides {list(strides)}, "
                              f"got {len(outputs)}")
    score_maps = outputs[:num_levels]
    for stride, scores in zip(strides, score_maps):
        rows, cols = _level_shape(input_hw, stride)
        if rows * cols != scores.shape[1]:
            raise OutputFormError(f"level of stride {stride} has {scores.shape[1]} cells; a {input_hw[0]}x"
                                  f"{input_hw[1]} input gives {rows}x{cols}")
    return np.concatenate(score_maps, axis=1)


def decode_raw_cells(outputs: Sequence[np.ndarray], strides: Sequence[int], input_hw: tuple[int, int],
                     image: int, cells: np.ndarray) -> np.ndarray:
    """Boxes (M, 4) in input pixels of the given `cells` (indices into all levels' cells, in
    order) of batch image `image`: what decode_raw_heads gives for them, without decoding the
    others (a frame's candidates above the score threshold are a few of PicoDet-192's 765 cells;
    decoding all of them was 0.3 ms of the detector's 6 ms per frame, issue 17)."""
    centre, cell_stride = _cell_centres(tuple(input_hw), tuple(strides))
    logits = np.concatenate([level[image] for level in outputs[len(strides):]])[cells]  # (M, 4 * bins)
    return _boxes(logits, centre[cells], cell_stride[cells])


def _boxes(logits: np.ndarray, centre: np.ndarray, cell_stride: np.ndarray) -> np.ndarray:
    """Distribution logits (..., 4 * bins) of cells -> boxes (..., 4): each side's distance from
    the cell centre is the expectation of a softmax over the bins, times the level's stride."""
    logits = logits.reshape(*logits.shape[:-1], 4, logits.shape[-1] // 4)
    logits = logits - logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    bins = np.arange(weights.shape[-1], dtype=np.float32)
    distances = (weights @ bins) / weights.sum(axis=-1) * cell_stride      # (..., 4) l, t, r, b
    return centre + distances * np.array([-1, -1, 1, 1], np.float32)


def _level_shape(input_hw: tuple[int, int], stride: int) -> tuple[int, int]:
    """(rows, cols) of an FPN level's cells: the input divided by the stride, rounded up."""
    return -(-input_hw[0] // stride), -(-input_hw[1] // stride)


@lru_cache(maxsize=8)
def _cell_centres(input_hw: tuple[int, int], strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every cell of all levels, in output order: centres (N, 4) float32 cx, cy, cx, cy in
    input pixels and strides (N, 1) float32; read-only, shared by every batch of this input size."""
    levels = []
    for stride in strides:
        rows, cols = _level_shape(input_hw, stride)
        y, x = np.mgrid[0:rows, 0:cols]
        centre = (np.stack([x.ravel(), y.ravel()], axis=1) + 0.5) * stride
        levels.append(np.concatenate([centre, centre, np.full((len(centre), 1), stride)], axis=1))
    cells = np.concatenate(levels).astype(np.float32)                        # (N, 5) cx, cy, cx, cy, stride
    cells.flags.writeable = False
    return cells[:, :4], cells[:, 4:]


def split_decoded(outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The decoded form's (boxes (B, N, 4), scores (B, C, N)) -> (boxes, scores (B, N, C))."""
    first, second = outputs
    boxes, scores = (first, second) if first.shape[-1] == 4 and second.shape[-1] == first.shape[1] \
        else (second, first)
    if boxes.shape[-1] != 4 or scores.shape[-1] != boxes.shape[1]:
        raise OutputFormError(f"expected boxes (B, N, 4) and scores (B, C, N), got {first.shape} and {second.shape}")
    return boxes, scores.transpose(0, 2, 1)


def detections_from_graph_nms(outputs: Sequence[np.ndarray], person_class: int, image_sizes: Sequence[tuple[int, int]],
                              score_threshold: float, max_persons: int) -> list[Detections]:
    """NMS-in-graph rows (M, 6) and counts (B,) -> persons per frame (image_sizes: (h, w))."""
    rows, counts = (outputs[0], outputs[1]) if outputs[0].ndim == 2 else (outputs[1], outputs[0])
    if rows.shape[-1] != 6 or len(counts) != len(image_sizes):
        raise OutputFormError(f"expected rows (M, 6) and one count per frame ({len(image_sizes)}), "
                              f"got {rows.shape} and {counts.shape}")
    results = []
    ends = np.cumsum(counts.astype(np.int64))
    for (height, width), end, count in zip(image_sizes, ends, counts):
        frame_rows = rows[end - count:end]
        frame_rows = frame_rows[(frame_rows[:, 0] == person_class) & (frame_rows[:, 1] > score_threshold)]
        frame_rows = frame_rows[np.argsort(-frame_rows[:, 1], kind="stable")][:max_persons]
        boxes = clip_boxes(frame_rows[:, 2:6].astype(np.float32), width, height)
        results.append(Detections(boxes, frame_rows[:, 1].astype(np.float32)))
    return results
