"""One stream's tracks and their life: born tentative, confirmed, ended.

A detection that no track claims and whose score reaches `new_track_threshold` starts a
tentative track. A tentative track that misses a frame is dropped (it was probably a
false detection); one matched `min_hits` times is confirmed and gets the stream's next
integer id. A confirmed track unmatched for more than `max_age_s` seconds of media time
is removed, and its id is reported as ended. Subclasses decide how detections are
matched to tracks (`Tracker._associate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from streampose.frame import UNTRACKED
from streampose.tracking.association import iou_matrix, oks_matrix
from streampose.tracking.kalman import BoxKalman


class TrackerSettings(Protocol):
    """What trackers read of their settings (the tracker stage passes its graph parameters,
    graph/schema.py TrackerParams, where every one is described with its unit)."""

    high_threshold: float
    low_threshold: float
    new_track_threshold: float
    match_iou: float
    low_match_iou: float
    use_oks: bool
    oks_weight: float
    min_hits: int
    max_age_s: float
    inertia: float
    momentum_window_s: float


@dataclass
class Observations:
    """One frame's persons as the tracker sees them.

    boxes:      (N, 4) float, x1, y1, x2, y2 in pixels.
    scores:     (N,) float, detection confidence 0..1.
    keypoints:  (N, K, 3) float, x, y in pixels and confidence, or None.
    embeddings: (N, D) float, appearance embeddings (joint detection-embedding networks), or None.
    """

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray | None = None
    embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass
class TrackUpdate:
    """What one frame did to the tracks.

    rows:      (M,) int64, the detections that belong to confirmed tracks, by ascending id.
    track_ids: (M,) int64, their track ids.
    ended:     ids of the confirmed tracks removed at this frame.
    """

    rows: np.ndarray
    track_ids: np.ndarray
    ended: list[int] = field(default_factory=list)


class Track:
    """One person followed over time.

    box:         (4,) the last matched detection box, pixels.
    keypoints:   (K, 3) its keypoints, or None.
    last_match:  media time of the last match, seconds.
    hits:        matches so far.
    track_id:    the public id once confirmed, else UNTRACKED.
    was_matched: whether the latest update matched it.
    """

    def __init__(self, box: np.ndarray, keypoints: np.ndarray | None, time: float):
        self.kalman = BoxKalman(box, time)
        self.box = np.array(box, np.float64)
        self.keypoints = _copy(keypoints)
        self.last_match = time
        self.hits = 1
        self.track_id = UNTRACKED
        self.was_matched = True

    @property
    def confirmed(self) -> bool:
        return self.track_id != UNTRACKED

    def observe(self, box: np.ndarray, keypoints: np.ndarray | None, time: float) -> None:
        """A detection matched this track at `time` (the filter is already predicted there)."""
        self.kalman.update(box)
        self.box = np.array(box, np.float64)
        self.keypoints = _copy(keypoints)
        self.last_match = time
        self.hits += 1
        self.was_matched = True

    def miss(self, time: float) -> None:
        """No detection matched this track at `time`."""
        self.was_matched = False


class Tracker:
    """The tracks of one stream. `update` takes each frame's detections in media-time order."""

    def __init__(self, params: TrackerSettings, first_id: int = 1):
        self.params = params
        self.tracks: list[Track] = []
        self.next_id = first_id

    def update(self, detections: Observations, time: float) -> TrackUpdate:
        """Match `detections` at media `time` (seconds) to the tracks, start and end tracks."""
        for track in self.tracks:
            track.kalman.predict(time)
        pairs = self._associate(detections, time)
        matched = [(self.tracks[i], int(row)) for i, row in pairs]
        hit = np.zeros(len(self.tracks), bool)
        hit[pairs[:, 0]] = True
        for track, row in matched:
            self._observe(track, detections, row, time)
        for track in (t for t, h in zip(self.tracks, hit) if not h):
            track.miss(time)
        claimed = np.zeros(len(detections), bool)
        claimed[pairs[:, 1]] = True
        ended = self._expire(time)
        born = self._start(detections, ~claimed, time)
        published = [(track.track_id, row) for track, row in self._confirm(matched + born)]
        published.sort()
        return TrackUpdate(rows=np.array([row for _, row in published], np.int64),
                           track_ids=np.array([track_id for track_id, _ in published], np.int64),
                           ended=ended)

    def end_all(self) -> list[int]:
        """Remove every track; returns the ids of the confirmed ones."""
        ended = [track.track_id for track in self.tracks if track.confirmed]
        self.tracks = []
        return ended

    def _associate(self, detections: Observations, time: float) -> np.ndarray:
        """(M, 2) int64 pairs (track index, detection row), each track and row at most once."""
        raise NotImplementedError

    def _observe(self, track: Track, detections: Observations, row: int, time: float) -> None:
        """Detection `row` matched `track` at `time`."""
        track.observe(detections.boxes[row], _row(detections.keypoints, row), time)

    def _new_track(self, box: np.ndarray, keypoints: np.ndarray | None, time: float) -> Track:
        return Track(box, keypoints, time)

    def _similarity(self, tracks: np.ndarray, rows: np.ndarray, detections: Observations,
                   boxes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Gains and allowed pairs for tracks[tracks] x detections[rows].

        The gain is the IoU of the tracks' `boxes` (default: their predictions) with the
        detections', blended with the OKS of their poses when `use_oks` is set and both
        have confident joints. Pairs are allowed when the IoU reaches `match_iou`.
        """
        chosen = [self.tracks[i] for i in tracks]
        if boxes is None:
            boxes = np.array([t.kalman.box for t in chosen]).reshape(-1, 4)
        iou = iou_matrix(boxes, detections.boxes[rows])
        gain = iou
        if self.params.use_oks and detections.keypoints is not None and len(rows):
            posed = [i for i, t in enumerate(chosen) if t.keypoints is not None]
            if posed:
                # The last pose, moved along with the box since it was seen.
                shift = centre(boxes[posed]) - centre(np.array([chosen[i].box for i in posed]))
                poses = np.array([chosen[i].keypoints for i in posed])
                poses[..., :2] += shift[:, None, :]
                sides = boxes[posed, 2:] - boxes[posed, :2]
                oks = oks_matrix(poses, detections.keypoints[rows], sides.prod(axis=1))
                weight = self.params.oks_weight
                blended = np.where(np.isnan(oks), iou[posed], (1 - weight) * iou[posed] + weight * oks)
                gain = iou.copy()
                gain[posed] = blended
        return gain, iou >= self.params.match_iou

    def _expire(self, time: float) -> list[int]:
        """Drop tentative tracks that missed and confirmed ones unmatched for too long."""
        kept, ended = [], []
        for track in self.tracks:
            if track.confirmed and time - track.last_match <= self.params.max_age_s:
                kept.append(track)
            elif not track.confirmed and track.was_matched:
                kept.append(track)
            elif track.confirmed:
                ended.append(track.track_id)
        self.tracks = kept
        return ended

    def _start(self, detections: Observations, unclaimed: np.ndarray, time: float) -> list[tuple[Track, int]]:
        eligible = unclaimed & (detections.scores >= max(self.params.new_track_threshold,
                                                         self.params.high_threshold))
        born = []
        for row in np.flatnonzero(eligible):
            track = self._new_track(detections.boxes[row], _row(detections.keypoints, row), time)
            self.tracks.append(track)
            born.append((track, int(row)))
        return born

    def _confirm(self, candidates: list[tuple[Track, int]]) -> list[tuple[Track, int]]:
        """Those of the tracks matched or born at this frame (with their detection rows)
        that are confirmed, giving ids to those that just reached `min_hits`."""
        confirmed = []
        for track, row in candidates:
            if not track.confirmed and track.hits >= self.params.min_hits:
                track.track_id = self.next_id
                self.next_id += 1
            if track.confirmed:
                confirmed.append((track, row))
        return confirmed


def _row(array: np.ndarray | None, row: int) -> np.ndarray | None:
    return None if array is None else array[row]


def _copy(array: np.ndarray | None) -> np.ndarray | None:
    """A track's own copy: later stages may change a frame's arrays in place."""
    return None if array is None else np.array(array)


def centre(boxes: np.ndarray) -> np.ndarray:
    """(..., 4) x1, y1, x2, y2 -> (..., 2) centres."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2
