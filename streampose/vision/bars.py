"""Black bars around the picture (letterbox, pillarbox): where the scene's image ends.

Video re-encoded to another shape pads the picture with black rows or columns: 5 of the 48
labelled videos have them (a 4:3 clip in 16:9 with 30-pixel bars above and below, a doorbell
camera's 1920x1200 picture pillarboxed by 294 and 480 columns, 9-10 columns either side of a
dataset clip, 44 and 12 rows around a gym video's caption strip). A person standing at the
picture's edge is cut there, not at the image's: the fall plugin tells a body cut by the frame
edge by these edges (Frame.picture).

A bar is a run of rows (columns) at an edge of the image whose brightest pixel, over every frame
looked at so far, is at most BLACK: black bars stay black, while a dark scene's rows light up
somewhere (a lamp, a window, sensor noise) sooner or later, so the bars only ever narrow. A bar
wider than MAX_BAR of the image is taken for a dark scene, not a bar.
"""

from __future__ import annotations

import cv2
import numpy as np

# The brightest channel value a bar's pixels reach: encoders' black is 0-16; the labelled
# videos' bars measure the same at 12, 20 and 40.
BLACK = 24
# A bar covers at most this share of the image's height (width); beyond it, a dark scene.
MAX_BAR = 0.4
# Rows and columns are read on a copy scaled to about this many rows (nearest pixels): 0.5 ms
# for a 1920x1080 frame, against 3.5 ms for numpy's reductions over strided full-size views.
SAMPLE_ROWS = 270
# Frames looked at: each of the first FIRST_FRAMES of a stream, then every EVERY-th.
FIRST_FRAMES = 10
EVERY = 25


class PictureFinder:
    """One stream's bars, learnt from its frames in order (`update`)."""

    def __init__(self):
        self.shape: tuple[int, ...] | None = None  # of the images learnt from; another size starts afresh
        self.frames = 0
        self.row_max = self.col_max = np.zeros(0, np.uint8)  # brightest pixel of each sampled row, column
        self.picture: tuple[int, int, int, int] | None = None

    def update(self, image: np.ndarray) -> tuple[int, int, int, int] | None:
        """The picture (x1, y1, x2, y2) inside the bars after `image` ((H, W, 3) uint8), or None
        when there are none (or the image is black all over)."""
        if image.shape != self.shape:
            self.shape, self.frames, self.picture = image.shape, 0, None
        self.frames += 1
        if self.frames > FIRST_FRAMES and self.frames % EVERY:
            return self.picture
        height, width = image.shape[:2]
        step = max(1, height // SAMPLE_ROWS)
        small = image if step == 1 else cv2.resize(image, (width // step, height // step),
                                                   interpolation=cv2.INTER_NEAREST)
        brightest = np.maximum(np.maximum(small[..., 0], small[..., 1]), small[..., 2])
        rows, cols = brightest.max(axis=1), brightest.max(axis=0)
        if self.frames == 1:
            self.row_max, self.col_max = rows, cols
        else:
            np.maximum(self.row_max, rows, out=self.row_max)
            np.maximum(self.col_max, cols, out=self.col_max)
        top, bottom = _bars(self.row_max)
        left, right = _bars(self.col_max)
        if top is None or left is None or not (top or bottom or left or right):
            self.picture = None
        else:
            sy, sx = height / len(self.row_max), width / len(self.col_max)
            self.picture = (round(left * sx), round(top * sy), width - round(right * sx), height - round(bottom * sy))
        return self.picture


def _bars(brightest: np.ndarray) -> tuple[int | None, int]:
    """(entries at the start, at the end) at most BLACK, each 0 beyond MAX_BAR; (None, 0) if all are."""
    lit = np.flatnonzero(brightest > BLACK)
    if not len(lit):
        return None, 0
    start, end = int(lit[0]), len(brightest) - 1 - int(lit[-1])
    most = MAX_BAR * len(brightest)
    return (start if start <= most else 0), (end if end <= most else 0)
