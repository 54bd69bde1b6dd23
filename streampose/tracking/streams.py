"""One tracker per stream, restarted when the stream's timeline breaks.

A stream's tracker is dropped without announcement on StreamEvent "lost" or "ended",
on "opened" with a new segment, and when a frame comes from a new segment: downstream
stages free that stream's state on the same events. If media time runs backwards within
a segment, or the stage calls `restart` (a hard cut), the tracks end on that frame
(announced in `frame.ended_tracks`) and start afresh. Ids keep counting across restarts, so an id is never reused within a stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from streampose.frame import Frame, StreamEvent
from streampose.tracking.track import Tracker


@dataclass
class _StreamTracks:
    segment: int
    time: float       # media time of the stream's latest frame, seconds
    tracker: Tracker


class StreamTrackers:
    """`make_tracker(first_id)` builds a stream's tracker, numbering its ids from first_id."""

    def __init__(self, make_tracker: Callable[[int], Tracker], log: logging.Logger):
        self._make_tracker = make_tracker
        self._log = log
        self._streams: dict[str, _StreamTracks] = {}
        self._next_ids: dict[str, int] = {}   # per stream, survives restarts

    def for_frame(self, frame: Frame) -> Tracker:
        """The tracker of `frame`'s stream, restarted first if its timeline broke."""
        tracks = self._streams.get(frame.stream)
        if tracks is not None and tracks.segment == frame.segment and frame.media_time < tracks.time:
            self._log.warning("stream %s: media time went back from %.3f to %.3f s; restarting its tracks",
                              frame.stream, tracks.time, frame.media_time)
            self.restart(frame)
            tracks = None
        if tracks is None or tracks.segment != frame.segment:
            self.reset(frame.stream)
            tracks = _StreamTracks(frame.segment, frame.media_time,
                                   self._make_tracker(self._next_ids.get(frame.stream, 1)))
            self._streams[frame.stream] = tracks
        tracks.time = frame.media_time
        return tracks.tracker

    def restart(self, frame: Frame, why: str = "") -> None:
        """End every track of `frame`'s stream on this frame (listed in its `ended_tracks`); the
        next `for_frame` starts a new tracker."""
        tracks = self._streams.get(frame.stream)
        if tracks is None:
            return
        if why:
            self._log.info("stream %s: %s at %.3f s; restarting its tracks", frame.stream, why, frame.media_time)
        frame.ended_tracks.extend(tracks.tracker.end_all())
        self.reset(frame.stream)

    def current(self, stream: str) -> Tracker | None:
        """The stream's tracker as it stands, or None before its first frame or after a reset."""
        tracks = self._streams.get(stream)
        return tracks.tracker if tracks else None

    def reset(self, stream: str) -> None:
        tracks = self._streams.pop(stream, None)
        if tracks is not None:
            self._next_ids[stream] = tracks.tracker.next_id

    def on_stream_event(self, event: StreamEvent) -> None:
        if event.restarts_stream:
            self.reset(event.stream)
