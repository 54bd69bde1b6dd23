"""ByteTrack (Zhang et al., 2022): associate every detection box, low scores too.

Confident detections (score >= `high_threshold`) are matched first to the confirmed
tracks' predicted boxes. The confirmed tracks still unmatched that were matched in the
previous frame then get a second chance with the weak detections (`low_threshold` <=
score < `high_threshold`), which are often the same person partly hidden; weak
detections never start tracks. Tentative tracks are matched last, to what is left of
the confident detections.
"""

from __future__ import annotations

import numpy as np

from streampose.tracking.association import iou_matrix, match
from streampose.tracking.track import Observations, Tracker


class ByteTracker(Tracker):
    def _associate(self, detections: Observations, time: float) -> np.ndarray:
        params = self.params
        strong = np.flatnonzero(detections.scores >= params.high_threshold)
        weak = np.flatnonzero((detections.scores >= params.low_threshold)
                              & (detections.scores < params.high_threshold))
        confirmed = np.array([i for i, t in enumerate(self.tracks) if t.confirmed], np.int64)
        tentative = np.array([i for i, t in enumerate(self.tracks) if not t.confirmed], np.int64)

        first = match(*self._similarity(confirmed, strong, detections))
        pairs = [np.stack([confirmed[first.pairs[:, 0]], strong[first.pairs[:, 1]]], axis=1)]

        recent = confirmed[first.unmatched_tracks]
        recent = recent[np.array([self.tracks[i].was_matched for i in recent], bool)]
        boxes = np.array([self.tracks[i].kalman.box for i in recent]).reshape(-1, 4)
        iou = iou_matrix(boxes, detections.boxes[weak])
        second = match(iou, iou >= params.low_match_iou)
        pairs.append(np.stack([recent[second.pairs[:, 0]], weak[second.pairs[:, 1]]], axis=1))

        left = strong[first.unmatched_detections]
        third = match(*self._similarity(tentative, left, detections))
        pairs.append(np.stack([tentative[third.pairs[:, 0]], left[third.pairs[:, 1]]], axis=1))
        return np.concatenate(pairs)
