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

Frames further apart than FULL_PICTURE_MAX_GAP_S (a camera under 14 fps, a stream processed at a
reduced rate, dropped frames) differ more within a shot: the people in them have moved further.
Taking the first frame of every 0.2 s of the same videos (5 fps), a burpee's whole picture
correlates 0.48, jumping jacks 0.69 and a worker the camera pans after 0.72, as low as a cut's
(0.47-0.72): 2 of the 44 videos without cuts had such false cuts at 10 fps, 7 at 5 fps, 12 at 3
fps, each ending the tracks of the people in view (the worker's in the middle of his fall). So a
pair that far apart is a cut only when its *background*, the thumbnail pixels no detected
person's box touches in either frame, changes as well: at 12, 10, 5 and 3 fps every cut above
stays a cut (background 0.49-0.73, the lift's 0.56, the branch's -0.03) but one (a car park's
second camera, whose background alone correlates 0.85), and within shots only a handheld camera
jerking on an ice rink (at 5 fps and below) and a street crowd around a child (at 3 fps) read a
cut. A background too small (under MIN_BACKGROUND of the thumbnail) or too flat (a studio's plain
wall, whose faint shading correlates anything from 0.2 to 1) to tell is no cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

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
# Frames at most this far apart (seconds; 14 fps and faster) are compared whole: at 12-30 fps no
# pair within a shot of the 48 labelled videos reads a cut that way; further apart, only their
# background (see above).
FULL_PICTURE_MAX_GAP_S = 0.07
# A background judged must cover at least this share of the thumbnail's pixels...
MIN_BACKGROUND = 0.25
# ...and vary by at least this standard deviation of grey levels (0-255) in both frames: a
# plain studio wall varies by 2-6, a room or a street by 20-60.
MIN_BACKGROUND_CONTRAST = 8.0


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(24, 32, 3) uint8: the image averaged down to THUMBNAIL_SIZE."""
    height, width = image.shape[:2]
    step = max(1, min(SAMPLE_STEP, width // (4 * THUMBNAIL_SIZE[0]), height // (4 * THUMBNAIL_SIZE[1])))
    if step > 1 and width % step == 0 and height % step == 0:
        # The same pixels as image[::step, ::step] (nearest neighbour at an integer scale), in half
        # the CPU: numpy's strided copy of 3-byte pixels cost 0.63 ms a 1920x1080 frame, this 0.28.
        sampled = cv2.resize(image, (width // step, height // step), interpolation=cv2.INTER_NEAREST)
    else:
        sampled = image[::step, ::step]
    return cv2.resize(sampled, THUMBNAIL_SIZE, interpolation=cv2.INTER_AREA)


def aligned_similarity(a: np.ndarray, b: np.ndarray, max_shift: int = MAX_SHIFT) -> float:
    """The best correlation of two (H, W) pictures over the shifts of b by up to max_shift
    pixels either way, each on the part the two share (1 when either part is flat).

    All shifts at once, from sums over each shift's shared part: with integer-valued pixels (a
    look's grey levels) every sum is exact. On the 942 consecutive pairs of five shared clips this
    differs from correlating each shift's parts one by one (mean-centred, 300 numpy calls a
    frame) by at most 6e-16, in 0.14 instead of 0.40 ms of CPU."""
    height, width = a.shape
    rows_a, rows_b, cols_a, cols_b = _shift_masks(height, width, max_shift)
    count = rows_a.sum(axis=1)[:, None] * cols_a.sum(axis=1)[None, :]
    sum_a, sum_aa = rows_a @ a @ cols_a.T, rows_a @ (a * a) @ cols_a.T
    sum_b, sum_bb = rows_b @ b @ cols_b.T, rows_b @ (b * b) @ cols_b.T
    padded = np.zeros((height + 2 * max_shift, width + 2 * max_shift))
    padded[max_shift:max_shift + height, max_shift:max_shift + width] = b
    # windows[s + dy, s + dx] is b shifted by (dy, dx) under a, zero where it does not reach.
    windows = np.lib.stride_tricks.sliding_window_view(padded, (height, width))[::-1, ::-1]
    sum_ab = np.einsum("yxhw,hw->yx", windows, a)
    spread = (count * sum_aa - sum_a ** 2) * (count * sum_bb - sum_b ** 2)
    covariance = count * sum_ab - sum_a * sum_b
    flat = spread <= 0
    correlation = np.where(flat, 1.0, covariance / np.sqrt(np.where(flat, 1.0, spread)))
    return float(max(correlation.max(), -1.0))


@lru_cache(maxsize=8)
def _shift_masks(height: int, width: int, max_shift: int) -> tuple[np.ndarray, ...]:
    """(2 max_shift + 1, H) and (2 max_shift + 1, W) 0/1 masks, by shift dy (dx) from -max_shift:
    the rows (columns) of a and of b that the shift pairs."""
    shifts = np.arange(-max_shift, max_shift + 1)[:, None]
    rows, cols = np.arange(height)[None, :], np.arange(width)[None, :]
    return ((rows >= shifts) & (rows < height + shifts)).astype(np.float64), \
        ((rows >= -shifts) & (rows < height - shifts)).astype(np.float64), \
        ((cols >= shifts) & (cols < width + shifts)).astype(np.float64), \
        ((cols >= -shifts) & (cols < width - shifts)).astype(np.float64)


@dataclass(frozen=True)
class Look:
    """A frame as the cut detector compares it.

    grey:       (24, 32) float, the thumbnail's grey levels 0-255.
    people:     (N, 4) float, the frame's detected persons' boxes in thumbnail pixels, x1 y1 x2 y2.
    media_time: the frame's media time, seconds.
    """

    grey: np.ndarray
    people: np.ndarray
    media_time: float

    def background(self) -> np.ndarray:
        """(24, 32) bool: the thumbnail pixels no person's box touches. Made only when a pair of
        frames far apart is judged (35 us for 9 boxes, an eighth of a look's cost)."""
        rows, columns = self.grey.shape
        background = np.ones((rows, columns), bool)
        for x1, y1, x2, y2 in np.clip(self.people, 0, [columns, rows, columns, rows]):
            background[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = False
        return background


def background_similarity(a: Look, b: Look, max_shift: int = MAX_SHIFT) -> float | None:
    """The best correlation of two looks' common background (pixels that are background in both,
    b shifted by up to max_shift either way), over the shifts where it covers MIN_BACKGROUND of
    the thumbnail and varies by MIN_BACKGROUND_CONTRAST in both; None when no shift qualifies.
    Sums over each shift's pixels as in aligned_similarity, weighted by the background masks."""
    height, width = a.grey.shape
    padded = np.zeros((3, height + 2 * max_shift, width + 2 * max_shift))
    weight_b = b.background().astype(np.float64)
    padded[:, max_shift:max_shift + height, max_shift:max_shift + width] = [weight_b, weight_b * b.grey,
                                                                           weight_b * b.grey ** 2]
    windows = np.lib.stride_tricks.sliding_window_view(padded, (height, width), axis=(1, 2))[:, ::-1, ::-1]
    weight_a = a.background().astype(np.float64)
    # sums[k, l, dy, dx]: sum over the pixels of (b's weight x b^k), shifted, times (a's weight x a^l)
    sums = np.einsum("kyxhw,lhw->klyx", windows, np.stack([weight_a, weight_a * a.grey, weight_a * a.grey ** 2]))
    count, sum_a, sum_aa = sums[0, 0], sums[0, 1], sums[0, 2]
    sum_b, sum_ab, sum_bb = sums[1, 0], sums[1, 1], sums[2, 0]
    spread_a, spread_b = count * sum_aa - sum_a ** 2, count * sum_bb - sum_b ** 2   # count^2 x variance
    enough = count >= MIN_BACKGROUND * height * width
    floor = (count * MIN_BACKGROUND_CONTRAST) ** 2
    judged = enough & (spread_a >= floor) & (spread_b >= floor)
    if not judged.any():
        return None
    correlation = (count * sum_ab - sum_a * sum_b)[judged] / np.sqrt(spread_a[judged] * spread_b[judged])
    return float(correlation.max())


class CutDetector:
    """Whether a frame is a hard cut from its stream's previous frame: their layouts, best
    aligned, correlate less than `threshold`, and, for frames more than FULL_PICTURE_MAX_GAP_S
    apart, their backgrounds too. The caller keeps each stream's last `look` (the tracker stage,
    in its state store)."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    @staticmethod
    def look(image: np.ndarray, boxes: np.ndarray, media_time: float) -> Look:
        """What a frame is compared by: its thumbnail's grey pixels and which of them show no
        person (`boxes`, the frame's detections, (N, 4) x1 y1 x2 y2 pixels)."""
        grey = cv2.cvtColor(thumbnail(image), cv2.COLOR_BGR2GRAY).astype(np.float64)
        height, width = image.shape[:2]
        columns, rows = THUMBNAIL_SIZE
        scale = np.array([columns / width, rows / height] * 2)
        return Look(grey, np.asarray(boxes, np.float64).reshape(-1, 4) * scale, media_time)

    def is_cut(self, last: Look | None, now: Look) -> bool:
        if last is None or aligned_similarity(last.grey, now.grey) >= self.threshold:
            return False
        if now.media_time - last.media_time <= FULL_PICTURE_MAX_GAP_S:
            return True
        background = background_similarity(last, now)
        return background is not None and background < self.threshold
