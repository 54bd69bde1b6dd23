"""The tracker stage: a stable id for every person of every stream (ByteTrack or OC-SORT).

Each stream has its own tracks. A frame's persons are replaced by those belonging to
confirmed tracks, ordered by id, with `track_ids` set; detections of tentative tracks and
unmatched weak detections are dropped, so everything downstream sees only persons it can
follow. Boxes, scores and keypoints stay the detector's and pose model's (the Kalman
filters only guide matching; smoothing is the smoother stage's job). Removed tracks' ids
are appended to the frame's `ended_tracks`.

A stream's tracks are dropped without announcement on StreamEvent "lost" or "ended", and
when a frame comes from a new segment: downstream stages free that stream's state on the
same events. If media time runs backwards within a segment, the tracks end on that frame
(announced) and start afresh. Ids keep counting across these resets, so an id is never
reused within a stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from streampose.frame import Frame, StreamEvent
from streampose.graph import schema
from streampose.runtime.stage import Stage, StageContext
from streampose.tracking.bytetrack import ByteTracker
from streampose.tracking.ocsort import OcSortTracker
from streampose.tracking.track import Detections, Tracker

ALGORITHMS: dict[str, type[Tracker]] = {"bytetrack": ByteTracker, "ocsort": OcSortTracker}


@dataclass
class _StreamTracks:
    segment: int
    time: float       # media time of the stream's latest frame, seconds
    tracker: Tracker


class TrackerStage(Stage):
    Params = schema.Tracker

    def __init__(self, stage_id: str, params: schema.Tracker, context: StageContext):
        super().__init__(stage_id, params, context)
        self._streams: dict[str, _StreamTracks] = {}
        self._next_ids: dict[str, int] = {}   # per stream, survives resets

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            tracks = self._tracks_for(frame)
            persons = frame.persons
            update = tracks.tracker.update(Detections(persons.boxes, persons.scores, persons.keypoints),
                                           frame.media_time)
            kept = persons.select(update.rows)
            kept.track_ids = update.track_ids
            frame.persons = kept
            frame.ended_tracks.extend(update.ended)
            tracks.time = frame.media_time

    def _tracks_for(self, frame: Frame) -> _StreamTracks:
        tracks = self._streams.get(frame.stream)
        if tracks is not None and tracks.segment == frame.segment and frame.media_time < tracks.time:
            self.log.warning("stream %s: media time went back from %.3f to %.3f s; restarting its tracks",
                             frame.stream, tracks.time, frame.media_time)
            frame.ended_tracks.extend(tracks.tracker.end_all())
            self._reset(frame.stream)
            tracks = None
        if tracks is None or tracks.segment != frame.segment:
            self._reset(frame.stream)
            first_id = self._next_ids.get(frame.stream, 1)
            tracks = _StreamTracks(frame.segment, frame.media_time,
                                   ALGORITHMS[self.params.algorithm](self.params, first_id))
            self._streams[frame.stream] = tracks
        return tracks

    def _reset(self, stream: str) -> None:
        tracks = self._streams.pop(stream, None)
        if tracks is not None:
            self._next_ids[stream] = tracks.tracker.next_id

    def on_stream_event(self, event: StreamEvent) -> None:
        if event.kind in ("lost", "ended") or (event.kind == "opened" and event.segment > 0):
            self._reset(event.stream)
