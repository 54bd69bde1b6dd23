"""Greedy non-maximum suppression of one class's boxes.

Semantics of PaddleDetection's deploy `hard_nms` (picodet_postprocess.py): boxes
scoring above `score_threshold` (strictly) are candidates, at most `candidates` of
the best are considered, a box is dropped when its IoU with a kept, better box
exceeds `iou_threshold` (IoU on continuous corners: no +1 on widths), and at most
`keep` boxes are returned, best first. The greedy pass is OpenCV's.
"""

from __future__ import annotations

import cv2
import numpy as np

CANDIDATES = 200  # PaddleDetection's hard_nms candidate_size


def nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float,
        keep: int, candidates: int = CANDIDATES) -> np.ndarray:
    """Indices of the kept boxes, best first.

    boxes:  (N, 4) x1, y1, x2, y2 (any unit).
    scores: (N,).
    """
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    xywh = np.asarray(boxes, np.float64).copy()
    xywh[:, 2:] -= xywh[:, :2]
    kept = cv2.dnn.NMSBoxes(xywh, np.asarray(scores, np.float32), float(score_threshold), float(iou_threshold),
                            top_k=candidates)
    return np.asarray(kept, np.int64).reshape(-1)[:keep]
