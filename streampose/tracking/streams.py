"""One tracker per stream, kept in its stage's state store (runtime/state.py).

A stream's tracker goes with the store's timeline breaks (a stream event that restarts it, a
new segment, media time stepping back), without announcement: the stages after it reset on the
same rule. A hard cut (`restart`) ends its tracks on that frame, announced in
`frame.ended_tracks`. Ids keep counting across restarts, so an id is never reused within a stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from streampose.frame import Frame
from streampose.runtime.stage import Stage
from streampose.tracking.track import Tracker


@dataclass
class _Slot:
    tracker: Tracker | None = None   # made at the stream's first frame after a reset


class StreamTrackers:
    """`make_tracker(first_id)` builds a stream's tracker, numbering its ids from first_id."""

    def __init__(self, stage: Stage, make_tracker: Callable[[int], Tracker], log: logging.Logger):
        self._make_tracker = make_tracker
        self._log = log
        self._slots = stage.per_stream(_Slot, on_drop=self._dropped)
        self._next_ids: dict[str, int] = {}   # per stream, survives restarts

    def for_frame(self, frame: Frame) -> Tracker:
        """The tracker of `frame`'s stream, a new one after a timeline break."""
        slot = self._slots.get(frame)
        if slot.tracker is None:
            slot.tracker = self._make_tracker(self._next_ids.get(frame.stream, 1))
        return slot.tracker

    def restart(self, frame: Frame, why: str) -> None:
        """End every track of `frame`'s stream on this frame (listed in its `ended_tracks`); the
        next `for_frame` starts a new tracker."""
        slot = self._slots.get(frame)
        if slot.tracker is None:
            return
        self._log.info("stream %s: %s at %.3f s; restarting its tracks", frame.stream, why, frame.media_time)
        frame.ended_tracks.extend(slot.tracker.end_all())
        self._next_ids[frame.stream] = slot.tracker.next_id
        slot.tracker = None

    def current(self, stream: str) -> Tracker | None:
        """The stream's tracker as it stands, or None before its first frame or after a reset."""
        slot = self._slots.peek(stream)
        return slot.tracker if slot else None

    def _dropped(self, stream: str, key, slot: _Slot, frame: Frame | None) -> None:
        if slot.tracker is not None:
            self._next_ids[stream] = slot.tracker.next_id
