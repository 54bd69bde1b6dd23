"""Hard cuts in a stream: the picture changes to another scene from one frame to the next.

A tracker that carries its tracks across a cut hands one person's id to another person (or
the same person seen from elsewhere) in the new scene, and the stages after it carry that
track's history over too: a fall detector would measure a "drop" from a standing person in
one shot to a lying one in the next. The tracker stage therefore ends every track of a stream
at a cut (streampose.stages.tracker).

The detector compares each frame's layout with the one before: the correlation of the two
frames' grey 32x24 thumbnails, pixel by pixel, at the best of the small shifts (up to
MAX_SHIFT thumbnail pixels either way). A cut changes the layout whatever the shift; a camera
panning or shaking only shifts it, people moving change only the part they cover, and an
exposure or white-balance jump none of it (a correlation ignores brightness and contrast).
Colour histograms are no help: a cut between a wide and a close shot of one place keeps its
colours. On the 48 labelled videos (every pair of consecutive frames): the cuts and jump zooms
of edited footage measure at most 0.71 (a breakdance battle cutting and zooming between wide
and close shots of one gym: 0.62-0.71, histograms 0.98-0.99; the news and CCTV compilations:
-0.13-0.53), frames of one shot at least 0.83 (a burpee filling a third of the picture; a
camera panning after a worker: 0.93 aligned, 0.86 not; exposure jumps: 0.98).
"""

from __future__ import annotations

import cv2
import numpy as np

# Width, height of the thumbnail the detector reads (and the evaluation's pose cache stores).
THUMBNAIL_SIZE = (32, 24)
# Shifts tried, thumbnail pixels either way (1/16 of the width): a pan of up to that much
# between two frames is no cut.
MAX_SHIFT = 2
# The thumbnail averages every SAMPLE_STEP-th pixel of every SAMPLE_STEP-th row (fewer on a small
# image, which keeps 4 samples a thumbnail pixel each way): averaging all of a 960x544 frame cost
# 1.5 ms of CPU a frame, most of the tracker stage's. On every pair of consecutive frames of the
# 48 labelled videos the sampled thumbnails' similarity differs from the full ones' by at most
# 0.012 and no pair changes side of the cut threshold (0.75); 0.3 instead of 0.8 ms a frame.
SAMPLE_STEP = 4


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(24, 32, 3) uint8: the image averaged down to THUMBNAIL_SIZE."""
    height, width = image.shape[:2]
    step = max(1, min(SAMPLE_STEP, width // (4 * THUMBNAIL_SIZE[0]), height // (4 * THUMBNAIL_SIZE[1])))
    return cv2.resize(image[::step, ::step], THUMBNAIL_SIZE, interpolation=cv2.INTER_AREA)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two arrays, -1..1 (1 when either is flat)."""
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / norm) if norm > 0 else 1.0


def aligned_similarity(a: np.ndarray, b: np.ndarray, max_shift: int = MAX_SHIFT) -> float:
    """The best correlation of two (H, W) pictures over the shifts of b by up to max_shift
    pixels either way, each on the part the two share."""
    height, width = a.shape
    best = -1.0
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            rows_a, rows_b = slice(max(dy, 0), height + min(dy, 0)), slice(max(-dy, 0), height + min(-dy, 0))
            cols_a, cols_b = slice(max(dx, 0), width + min(dx, 0)), slice(max(-dx, 0), width + min(-dx, 0))
            best = max(best, similarity(a[rows_a, cols_a].ravel(), b[rows_b, cols_b].ravel()))
    return best


class CutDetector:
    """Whether a frame is a hard cut from its stream's previous frame: their layouts, best
    aligned, correlate less than `threshold`. The caller keeps each stream's last `look` (the
    tracker stage, in its state store)."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    @staticmethod
    def look(image: np.ndarray) -> np.ndarray:
        """What a frame is compared by: its thumbnail's grey pixels, (24, 32) float."""
        return cv2.cvtColor(thumbnail(image), cv2.COLOR_BGR2GRAY).astype(np.float64)

    def is_cut(self, last: np.ndarray | None, now: np.ndarray) -> bool:
        return last is not None and aligned_similarity(last, now) < self.threshold
