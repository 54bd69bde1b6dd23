"""Which of a stream's frames enter the graph, decided before the frame is converted.

The source asks `Admission.admit()` for each decoded frame before converting it to a BGR
array: a frame that will not enter costs its decode only (the BGR conversion was 0.4-1.0 ms
of CPU per 1280x720-1920x1080 frame on top of 1.3-2.4 ms of decoding, and 83% of the source
threads' work went to frames then dropped, issue 17).

A file stream's frame waits for a free slot at the gate, so every frame is processed. A live
stream's frame that finds no free slot is dropped. Under sustained overload such drops fall
wherever a slot happens to be busy, which leaves uneven gaps in the stream; `Thinning` lets in
every k-th frame instead, with k the smallest that keeps the gate's drops rare, so a live
stream is processed at an even, reduced rate (1/k of its frames).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from streampose.runtime.metrics import Metrics

# Thinning decides once per WINDOW frames it lets through to the gate. More than
# RAISE_SHARE of them dropped there: k grows so that the gate would have taken about all of
# them (back to the last calm k when a try at a lower one failed). None dropped for a number
# of windows in a row (CALM_WINDOWS, doubled after each failed try up to MAX_CALM_WINDOWS):
# k shrinks by one, to try a higher rate, since load changes. At 25 fps and k = 2 a window is
# 1.6 s of video. A gate with one free slot wastes the slots freed between tried frames, so
# the drop share at k - 1 overstates the overload: hence the return to the calm k.
WINDOW = 20
RAISE_SHARE = 0.1
CALM_WINDOWS = 4
MAX_CALM_WINDOWS = 32
MAX_EVERY = 50


class Thinning:
    """Lets every k-th frame of a live stream try the gate, and adapts k to the drops there."""

    def __init__(self) -> None:
        self.every = 1  # k
        self._skipped = 0  # frames skipped since the last one that tried the gate
        self._tried = self._dropped = 0  # this window's frames that tried the gate, and their drops
        self._calm = 0  # windows in a row without a drop
        self._calm_needed = CALM_WINDOWS
        self._calm_every: int | None = None  # the k that was calm before the current try, if trying

    def offer(self) -> bool:
        """Whether the next frame of the stream tries the gate (False: it is skipped)."""
        if self._skipped >= self.every - 1:
            self._skipped = 0
            return True
        self._skipped += 1
        return False

    def result(self, admitted: bool) -> None:
        """The gate's answer for a frame `offer` let through."""
        self._tried += 1
        self._dropped += not admitted
        if self._tried < WINDOW:
            return
        share = self._dropped / self._tried
        if share > RAISE_SHARE:
            if self._calm_every is not None and self._calm_every > self.every:  # the try failed
                self._calm_needed = min(2 * self._calm_needed, MAX_CALM_WINDOWS)
                self._set(self._calm_every)
            else:  # more load: the gate took (1 - share) of the tried frames
                self._set(min(MAX_EVERY, max(self.every + 1, round(self.every / max(1 - share, 1 / MAX_EVERY)))))
            self._calm_every = None
        elif self._dropped == 0:
            self._calm += 1
            if self._calm_every is not None and self._calm >= CALM_WINDOWS:  # the try held
                self._calm_every, self._calm_needed = None, CALM_WINDOWS
            if self.every > 1 and self._calm >= self._calm_needed:
                self._calm_every = self.every
                self._set(self.every - 1)
        else:
            self._calm = 0
        self._tried = self._dropped = 0

    def _set(self, every: int) -> None:
        self.every, self._calm = every, 0


class Admission:
    """The entrance of one stream: its gate, and for a live stream its thinning.

    try_enter(stop) -> bool takes a slot at the gate (a file stream waits for one; False only
    when stopping); record(dropped) feeds the stream's recent load (health.StreamLoad), None
    for a file stream.
    """

    def __init__(self, stream: str, live: bool, thinning: bool, try_enter: Callable[[threading.Event], bool],
                 record: Callable[[bool], None] | None, metrics: Metrics, stop: threading.Event):
        self.stream = stream
        self.thinning = Thinning() if live and thinning else None
        self._try_enter, self._record, self._metrics, self._stop = try_enter, record, metrics, stop
        metrics.gauge("admit_every", lambda: self.every, stream=stream)

    @property
    def every(self) -> int:
        """k: the stream is let in every k-th frame (1: every frame that finds a slot)."""
        return self.thinning.every if self.thinning else 1

    def admit(self) -> bool:
        """Whether the frame just decoded enters the graph (it then holds a slot)."""
        if self.thinning is not None and not self.thinning.offer():
            admitted = False
        else:
            admitted = self._try_enter(self._stop)
            if self._stop.is_set():
                return admitted
            if self.thinning is not None:
                self.thinning.result(admitted)
        if self._record is not None:
            self._record(not admitted)
        if not admitted:
            self._metrics.inc("drops", stream=self.stream)
        return admitted
