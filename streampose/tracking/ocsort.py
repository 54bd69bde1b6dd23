"""OC-SORT (Cao et al., 2023): trust the detections over the motion model.

Three additions to SORT, adapted to media time instead of frame counts:
- momentum: the first association adds to each pair's IoU a bonus, up to `inertia` / 2
  times the detection's score, when the direction from the track's observation about
  `momentum_window_s` ago to the detection agrees with the track's last observed direction
  of travel (and a malus when it opposes it);
- re-update: a track found again after missed frames re-runs its Kalman filter from its
  last observation along a straight virtual path to the new one, at the times of the
  missed frames, so the velocity it learnt while lost does not linger;
- recovery: detections still unmatched are matched to the unmatched tracks' last observed
  boxes, which catches people who stopped while their prediction moved on.
Weak detections (`low_threshold` <= score < `high_threshold`) continue unmatched tracks
by IoU with their predictions before recovery, as in PaddleDetection's OC-SORT with
`use_byte`.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from streampose.tracking.association import iou_matrix, match
from streampose.tracking.track import Observations, Track, Tracker, centre

# Observations (and missed frames) kept per track: enough for the momentum window and the
# re-update at any frame rate this project meets; older ones are dropped.
HISTORY = 64


class OcSortTrack(Track):
    """A track that remembers its recent observed centres and the frames it missed.

    direction: (2,) unit vector of its last observed travel in the image, or None.
    """

    def __init__(self, box: np.ndarray, keypoints: np.ndarray | None, time: float, window_s: float):
        super().__init__(box, keypoints, time)
        self.window_s = window_s
        self.observed: deque[tuple[float, np.ndarray]] = deque([(time, centre(self.box))], maxlen=HISTORY)
        self.missed: deque[float] = deque(maxlen=HISTORY)
        self.direction: np.ndarray | None = None
        self.saved = self.kalman.snapshot()

    def reference(self, time: float) -> np.ndarray:
        """(2,) the centre observed about `window_s` before `time`: the oldest within the
        window, else the latest."""
        for seen, point in self.observed:
            if seen >= time - self.window_s:
                return point
        return self.observed[-1][1]

    def observe(self, box: np.ndarray, keypoints: np.ndarray | None, time: float) -> None:
        box = np.asarray(box, np.float64)
        last_box, last_time = self.box, self.saved[2]
        if self.missed and time > last_time:
            self.kalman.restore(self.saved)
            for missed_time in self.missed:
                fraction = (missed_time - last_time) / (time - last_time)
                self.kalman.predict(missed_time)
                self.kalman.update(last_box + fraction * (box - last_box))
            self.kalman.predict(time)
        self.missed.clear()
        travel = centre(box) - self.reference(time)
        distance = np.hypot(*travel)
        if distance > 0:
            self.direction = travel / distance
        super().observe(box, keypoints, time)
        self.observed.append((time, centre(box)))
        self.saved = self.kalman.snapshot()

    def miss(self, time: float) -> None:
        super().miss(time)
        self.missed.append(time)


class OcSortTracker(Tracker):
    def _new_track(self, box: np.ndarray, keypoints: np.ndarray | None, time: float) -> OcSortTrack:
        return OcSortTrack(box, keypoints, time, self.params.momentum_window_s)

    def _associate(self, detections: Observations, time: float) -> np.ndarray:
        params = self.params
        strong = np.flatnonzero(detections.scores >= params.high_threshold)
        weak = np.flatnonzero((detections.scores >= params.low_threshold)
                              & (detections.scores < params.high_threshold))
        every = np.arange(len(self.tracks))

        gain, allowed = self._similarity(every, strong, detections)
        first = match(gain + self._momentum(strong, detections, time), allowed)
        pairs = [np.stack([every[first.pairs[:, 0]], strong[first.pairs[:, 1]]], axis=1)]

        lost = every[first.unmatched_tracks]
        boxes = np.array([self.tracks[i].kalman.box for i in lost]).reshape(-1, 4)
        iou = iou_matrix(boxes, detections.boxes[weak])
        second = match(iou, iou >= params.low_match_iou)
        pairs.append(np.stack([lost[second.pairs[:, 0]], weak[second.pairs[:, 1]]], axis=1))

        lost = lost[second.unmatched_tracks]
        left = strong[first.unmatched_detections]
        last_seen = np.array([self.tracks[i].box for i in lost]).reshape(-1, 4)
        third = match(*self._similarity(lost, left, detections, boxes=last_seen))
        pairs.append(np.stack([lost[third.pairs[:, 0]], left[third.pairs[:, 1]]], axis=1))
        return np.concatenate(pairs)

    def _momentum(self, rows: np.ndarray, detections: Observations, time: float) -> np.ndarray:
        """(tracks, rows) bonus for detections in line with each track's travel."""
        tracks: list[OcSortTrack] = self.tracks  # type: ignore[assignment]
        moving = np.array([t.direction is not None for t in tracks], bool)
        directions = np.array([t.direction if t.direction is not None else (0.0, 0.0) for t in tracks]).reshape(-1, 2)
        references = np.array([t.reference(time) for t in tracks]).reshape(-1, 2)
        boxes = detections.boxes[rows].astype(np.float64)
        towards = (boxes[None, :, :2] + boxes[None, :, 2:]) / 2 - references[:, None, :]   # (T, D, 2)
        towards /= np.linalg.norm(towards, axis=2, keepdims=True) + 1e-6
        cosine = np.clip((towards * directions[:, None, :]).sum(axis=2), -1, 1)
        agreement = (np.pi / 2 - np.arccos(cosine)) / np.pi                               # -0.5 .. 0.5
        return agreement * moving[:, None] * self.params.inertia * detections.scores[rows][None, :]
