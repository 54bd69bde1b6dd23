"""Pausing a sink's writing for one stream after a storage error, with backoff.

A full disk (or a read-only, vanished or failing one) is an error of the sink that
writes, not of the graph: the sink abandons the file it was writing, skips that
stream's frames while paused, and tries again after a wait that doubles from
RETRY_FIRST_S up to RETRY_MAX_S while the error persists. The first failure of a
pause is logged as an error, repeats only at debug level, and the end of the pause
once with what was missed. While paused, `reason(stream)` says why (for health
reports) and the gauge `streampose_sink_paused{stage, stream}` is 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from streampose.runtime.stage import Stage

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0


@dataclass
class _Paused:
    reason: str
    since: float  # time.monotonic()
    retry_at: float  # time.monotonic()
    wait_s: float
    skipped: int = 0  # frames not written


class StoragePause:
    """Per stream of `stage`: whether writing is paused after a storage error, and until when."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self._paused: dict[str, _Paused] = {}
        for stream in stage.context.streams:
            stage.context.metrics.gauge("sink_paused", lambda s=stream: float(s in self._paused), stage=stage.id,
                                        stream=stream)

    def reason(self, stream: str) -> str | None:
        """Why writing the stream is paused, or None while it writes."""
        paused = self._paused.get(stream)
        return paused.reason if paused else None

    def skip(self, stream: str) -> bool:
        """True while the stream is paused and its next try is not due: the caller drops the frame."""
        paused = self._paused.get(stream)
        if paused is None or time.monotonic() >= paused.retry_at:
            return False
        paused.skipped += 1
        return True

    def failed(self, stream: str, what: str, error: OSError) -> None:
        """Writing `what` for the stream failed with a storage error: pause it, or wait longer."""
        self.stage.context.metrics.inc("errors", stage=self.stage.id, stream=stream)
        now = time.monotonic()
        paused = self._paused.get(stream)
        if paused is None:
            paused = self._paused[stream] = _Paused(reason=f"{error.strerror or error}: {what}", since=now,
                                                    retry_at=now, wait_s=RETRY_FIRST_S, skipped=1)
            self.stage.log.error("stream %s: writing %s failed (%s); paused, retrying in %.0f s and then at up to "
                                 "%.0f s intervals", stream, what, error, RETRY_FIRST_S, RETRY_MAX_S)
        else:
            paused.wait_s = min(paused.wait_s * 2, RETRY_MAX_S)
            paused.skipped += 1
            paused.reason = f"{error.strerror or error}: {what}"
            self.stage.log.debug("stream %s: writing %s failed again (%s); next try in %.0f s", stream, what, error,
                                 paused.wait_s)
        paused.retry_at = now + paused.wait_s

    def succeeded(self, stream: str) -> None:
        """A write for the stream went through: end its pause, if any."""
        paused = self._paused.pop(stream, None)
        if paused is not None:
            self.stage.log.warning("stream %s: writing resumed after %.1f s; %d frame(s) were not written",
                                   stream, time.monotonic() - paused.since, paused.skipped)
