"""Which of a stream's frames enter the graph, decided before the frame is converted.

The source asks `Admission.admit()` for each decoded frame before converting it to a BGR
array: a frame that will not enter costs its decode only (the BGR conversion was 0.4-1.0 ms
of CPU per 1280x720-1920x1080 frame on top of 1.3-2.4 ms of decoding, and 83% of the source
threads' work went to frames then dropped, issue 17).

A file stream's frame waits for a free slot at the gate, so every frame is processed. A live
stream's frame that finds no free slot is dropped. Under sustained overload such drops fall
wherever a slot happens to be busy, which leaves uneven gaps in the stream; `Thinning` lets in
an evenly spaced share of the frames instead, the largest that keeps the gate's drops rare, so
a live stream is processed at an even, reduced rate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from streampose.runtime.metrics import Metrics

# Thinning decides once per WINDOW frames it lets through to the gate. More than RAISE_SHARE of
# them dropped there: the rate falls to the share the gate took (but not below the last calm rate
# when a try at a higher one failed: a gate with one free slot wastes the slots freed between
# tried frames, so a drop share measured above the capacity overstates the overload). None
# dropped for a number of windows in a row (CALM_WINDOWS, doubled after each failed try up to
# MAX_CALM_WINDOWS): the rate tries half-way up to every frame, since load changes. A fractional
# rate keeps what the machine can do: with a whole k (every k-th frame), a stream the graph could
# take 87% of got 51% (k = 2; 84% now, simulated in tests/test_admission.py). At 25 fps and rate 0.5 a window is 1.6 s of video.
WINDOW = 20
RAISE_SHARE = 0.1
CALM_WINDOWS = 4
MAX_CALM_WINDOWS = 32
MIN_RATE = 1 / 50
FULL_RATE = 0.95  # a try that would reach this lets every frame through


class Thinning:
    """Lets an even share of a live stream's frames try the gate, and adapts the share to the
    drops there. Frames are let through where the running sum of the rate crosses a whole
    number, so gaps differ by at most one frame (rate 0.4: 3, 2, 3, 2, ...)."""

    def __init__(self) -> None:
        self.rate = 1.0  # share of the stream's frames let through to the gate
        self._credit = 0.0  # the running sum's fraction
        self._tried = self._dropped = 0  # this window's frames that tried the gate, and their drops
        self._calm = 0  # windows in a row without a drop
        self._calm_needed = CALM_WINDOWS
        self._calm_rate: float | None = None  # the rate that was calm before the current try, if trying

    @property
    def every(self) -> float:
        """1 / rate: a frame in this many tries the gate (1: every frame)."""
        return 1 / self.rate

    def offer(self) -> bool:
        """Whether the next frame of the stream tries the gate (False: it is skipped)."""
        self._credit += self.rate
        if self._credit >= 1 - 1e-9:
            self._credit -= 1
            return True
        return False

    def result(self, admitted: bool) -> None:
        """The gate's answer for a frame `offer` let through."""
        self._tried += 1
        self._dropped += not admitted
        if self._tried < WINDOW:
            return
        share = self._dropped / self._tried
        if share > RAISE_SHARE:
            taken = self.rate * (1 - share)
            if self._calm_rate is not None and self._calm_rate < self.rate:  # the try failed
                self._calm_needed = min(2 * self._calm_needed, MAX_CALM_WINDOWS)
                taken = max(taken, self._calm_rate)
            self._set(max(MIN_RATE, taken))
            self._calm_rate = None
        elif self._dropped == 0:
            self._calm += 1
            if self._calm_rate is not None and self._calm >= CALM_WINDOWS:  # the try held
                self._calm_rate, self._calm_needed = None, CALM_WINDOWS
            if self.rate < 1 and self._calm >= self._calm_needed:
                self._calm_rate = self.rate
                higher = (self.rate + 1) / 2
                self._set(1.0 if higher >= FULL_RATE else higher)
        else:
            self._calm = 0
        self._tried = self._dropped = 0

    def _set(self, rate: float) -> None:
        self.rate, self._calm = rate, 0


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
    def every(self) -> float:
        """1 / the thinning rate: one frame in this many tries to enter (1: every frame that finds
        a slot; 2.5: two in five, evenly spaced)."""
        return self.thinning.every if self.thinning else 1.0

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
