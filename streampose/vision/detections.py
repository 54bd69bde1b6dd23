"""From a detector's scored boxes in network-input pixels to person boxes in frame pixels.

The last step shared by every detector form that leaves NMS to us, in
PaddleDetection's deploy order: score threshold and NMS on the boxes as the
network drew them, then clipping to the resized image (network input pixels),
then division by the resize factors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from streampose.vision.nms import nms
from streampose.vision.preprocess import ImageBatch


@dataclass(frozen=True)
class NmsSettings:
    """score_threshold: keep scores above it; iou_threshold: NMS overlap limit;
    candidates: best boxes considered by NMS; keep: most boxes returned per frame."""

    score_threshold: float
    iou_threshold: float
    candidates: int
    keep: int

    @classmethod
    def from_config(cls, nms_block: Mapping | None, defaults: NmsSettings, score_threshold: float | None,
                    iou_threshold: float | None, max_persons: int) -> NmsSettings:
        """infer_cfg.yml's NMS block (keys score_threshold, nms_threshold, nms_top_k,
        keep_top_k) over `defaults`, then the stage's own thresholds over both."""
        block = nms_block or {}
        return cls(
            score_threshold=float(score_threshold if score_threshold is not None
                                  else block.get("score_threshold", defaults.score_threshold)),
            iou_threshold=float(iou_threshold if iou_threshold is not None
                                else block.get("nms_threshold", defaults.iou_threshold)),
            candidates=int(block.get("nms_top_k", defaults.candidates)),
            keep=min(int(block.get("keep_top_k", defaults.keep)), max_persons),
        )


@dataclass
class Detections:
    """Persons found in one frame, best first.

    boxes:  (N, 4) float32, x1, y1, x2, y2 in frame pixels.
    scores: (N,) float32, 0..1.
    """

    boxes: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))


def select_persons(boxes: np.ndarray, scores: np.ndarray, settings: NmsSettings, scale_factor: np.ndarray,
                   im_shape: np.ndarray) -> Detections:
    """One frame's candidates -> its persons.

    boxes:        (N, 4) x1, y1, x2, y2 in network input pixels.
    scores:       (N,) person scores.
    scale_factor: (2,) y, x resize factors of the frame.
    im_shape:     (2,) height, width of the resized frame in input pixels.
    """
    kept = nms(boxes, scores, settings.score_threshold, settings.iou_threshold, settings.keep,
               settings.candidates)
    if len(kept) == 0:
        return Detections.empty()
    picked = clip_boxes(boxes[kept].astype(np.float32), im_shape[1], im_shape[0])
    picked /= np.array([scale_factor[1], scale_factor[0], scale_factor[1], scale_factor[0]], np.float32)
    return Detections(picked, scores[kept].astype(np.float32))


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip (N, 4) float boxes x1, y1, x2, y2 in place to x in 0..width, y in 0..height (the
    image's far edges, not its last pixel index, as PaddleDetection's post-processing clips) and return them."""
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    return boxes


def select_batch(boxes: np.ndarray, scores: np.ndarray, settings: NmsSettings, batch: ImageBatch) -> list[Detections]:
    """`select_persons` for each frame of a batch: boxes (B, N, 4) in input pixels, person scores (B, N)."""
    return [select_persons(boxes[i], scores[i], settings, batch.scale_factor[i], batch.im_shape[i])
            for i in range(len(boxes))]
