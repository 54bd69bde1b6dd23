"""The tracker stage: a stable id for every person of every stream (ByteTrack or OC-SORT).

Each stream has its own tracks. A frame's persons are replaced by those belonging to
confirmed tracks, ordered by id, with `track_ids` set; detections of tentative tracks and
unmatched weak detections are dropped, so everything downstream sees only persons it can
follow. Boxes, scores and keypoints stay the detector's and pose model's (the Kalman
filters only guide matching; smoothing is the smoother stage's job). Removed tracks' ids
are appended to the frame's `ended_tracks`.

Streams restart their tracks at timeline breaks (runtime/state.py; silently: every stage after
this one resets on the same rule) and at a hard cut to another scene (streampose.tracking.cuts;
`cut_threshold`): the tracks end on the cut's frame (in `ended_tracks`, so the stages after
this one drop their per-track state) and new ids start there.
"""

from __future__ import annotations

from dataclasses import dataclass

from streampose.frame import Frame
from streampose.graph import schema
from streampose.runtime.stage import Stage, StageContext
from streampose.tracking.bytetrack import ByteTracker
from streampose.tracking.cuts import CutDetector, Look
from streampose.tracking.ocsort import OcSortTracker
from streampose.tracking.streams import StreamTrackers
from streampose.tracking.track import Observations, Tracker

@dataclass
class _LastLook:
    """A stream's previous frame as the cut detector compares it (CutDetector.look)."""

    look: Look | None = None


ALGORITHMS: dict[str, type[Tracker]] = {"bytetrack": ByteTracker, "ocsort": OcSortTracker}


class TrackerStage(Stage):
    def __init__(self, stage_id: str, params: schema.TrackerParams, context: StageContext):
        super().__init__(stage_id, params, context)
        self.trackers = StreamTrackers(self, lambda first_id: ALGORITHMS[params.algorithm](params, first_id),
                                       self.log)
        self.cuts = CutDetector(params.cut_threshold) if params.cut_threshold > -1 else None
        self.looks = self.per_stream(_LastLook)

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            if self.cuts is not None:
                last, now = self.looks.get(frame), self.cuts.look(frame.image, frame.persons.boxes, frame.media_time)
                if self.cuts.is_cut(last.look, now):
                    self.trackers.restart(frame, "a hard cut")
                last.look = now
            tracker = self.trackers.for_frame(frame)
            persons = frame.persons
            update = tracker.update(Observations(persons.boxes, persons.scores, persons.keypoints), frame.media_time)
            kept = persons.select(update.rows)
            kept.track_ids = update.track_ids
            frame.persons = kept
            frame.ended_tracks.extend(update.ended)

