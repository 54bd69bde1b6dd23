"""Hard cuts in a stream: the picture changes to another scene from one frame to the next.

A tracker that carries its tracks across a cut hands one person's id to another person (or
the same person seen from elsewhere) in the new scene, and the stages after it carry that
track's history over too: a fall detector would measure a "drop" from a standing person in
one shot to a lying one in the next. The tracker stage therefore ends every track of a stream
at a cut (streampose.stages.tracker).

The detector compares each frame with the one before, both averaged down to a 32x24
thumbnail, two ways: the colour histograms (8 bins per channel), which stay alike however the
people and the camera move within a scene, and the layout (the correlation of the grey
thumbnails, pixel by pixel), which an exposure or white-balance jump leaves alone. A cut changes
both: on the 48 labelled videos the three cuts measure 0.38-0.63 (histograms) and -0.22-0.50
(layout); frames of one scene at least 0.83 and 0.57 (fast floor moves), except the exposure
jumps of a handheld phone video (histograms -0.05-0.33, layout 0.98-0.99).
"""

from __future__ import annotations

import cv2
import numpy as np

# Width, height of the thumbnail the detector reads (and the evaluation's pose cache stores).
THUMBNAIL_SIZE = (32, 24)
BINS = 8


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(24, 32, 3) uint8: the image averaged down to THUMBNAIL_SIZE."""
    return cv2.resize(image, THUMBNAIL_SIZE, interpolation=cv2.INTER_AREA)


def histogram(thumb: np.ndarray) -> np.ndarray:
    """(3 * BINS,) per-channel histograms of a thumbnail, concatenated."""
    levels = (thumb.reshape(-1, 3).astype(np.int64) * BINS) // 256          # (P, 3) bin per channel
    return np.stack([np.bincount(levels[:, c], minlength=BINS) for c in range(3)]).ravel().astype(np.float64)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two arrays (histograms, grey thumbnails), -1..1."""
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / norm) if norm > 0 else 1.0


class CutDetector:
    """Whether a frame is a hard cut from its stream's previous frame: both its colour histogram
    and its layout correlate less than `threshold` with that frame's. The caller keeps each
    stream's last `look` (the tracker stage, in its state store)."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    @staticmethod
    def look(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What a frame is compared by: its thumbnail's colour histogram and grey pixels."""
        thumb = thumbnail(image)
        return histogram(thumb), cv2.cvtColor(thumb, cv2.COLOR_BGR2GRAY).ravel().astype(np.float64)

    def is_cut(self, last: tuple[np.ndarray, np.ndarray] | None, now: tuple[np.ndarray, np.ndarray]) -> bool:
        return (last is not None and similarity(last[0], now[0]) < self.threshold
                and similarity(last[1], now[1]) < self.threshold)
