"""JDE association (Wang et al., 2020; FairMOT): tracks matched by appearance first, then by overlap.

A joint detection-embedding network gives each detection an appearance embedding. The
association follows PaddleDetection's JDETracker, over the life cycle of `track.Tracker`:

1. Every confirmed track (those matched at the previous frame and those lost since) is
   matched by the distance between its smoothed embedding and each detection's, fused with
   the Kalman filter's squared Mahalanobis distance as 0.98 x embedding + 0.02 x Kalman; a
   pair beyond the filter's 95% gate never matches, nor one costing `tracked_thresh` or more.
2. Confirmed tracks matched at the previous frame and still unmatched take the detections
   left whose IoU with their predicted box exceeds 1 - `r_tracked_thresh`.
3. Tentative tracks take what is left by IoU above 1 - `unconfirmed_thresh`.
4. Detections still unclaimed scoring at least `det_thresh` start tentative tracks.

Detections scoring `conf_thres` or less take no part. A track's embedding is the running
mean of its detections' unit embeddings (momentum 0.9), kept unit length.

The settings come from the `tracker:` section of the model's infer_cfg.yml, which
PaddleDetection's exporter fills with the JDETracker block of the training config; keys
missing there take JDETracker's defaults. Two differences from PaddleDetection, both shared
with the other trackers here: the Kalman filter is `BoxKalman` (stepped by media time, so its
Mahalanobis distances are on its own scale; the gate is the same 95% quantile), and ids are
given when a track is confirmed (`min_hits` matches) rather than when it starts, so they have
no gaps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streampose.tracking.association import Matches, iou_matrix, match
from streampose.tracking.kalman import GATE_CHI2_95
from streampose.tracking.track import Observations, Track, Tracker

# Weight of the embedding distance against the Kalman distance in the first matching.
EMBEDDING_WEIGHT = 0.98
# Share of a track's embedding kept at each match.
FEATURE_MOMENTUM = 0.9
# PaddleDetection counts track_buffer in frames at this rate (max_time_lost = frame_rate / 30 x track_buffer).
TRACK_BUFFER_FPS = 30.0
METRICS = ("euclidean", "cosine")


class JdeConfigError(ValueError):
    """The model's `tracker:` section is missing or malformed."""


def _number(low: float = -np.inf, high: float = np.inf):
    def check(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    return check


# JDETracker's keys: default, check, what the check expects.
_SECTION_KEYS: dict[str, tuple[Any, Any, str]] = {
    "conf_thres": (0.0, _number(0, 1), "a score in [0, 1]"),
    "det_thresh": (0.3, _number(0, 1), "a score in [0, 1]"),
    "tracked_thresh": (0.7, _number(0), "a distance >= 0"),
    "r_tracked_thresh": (0.5, _number(0, 1), "an IoU distance in [0, 1]"),
    "unconfirmed_thresh": (0.7, _number(0, 1), "an IoU distance in [0, 1]"),
    "metric_type": ("euclidean", lambda v: v in METRICS, " or ".join(METRICS)),
    "track_buffer": (30, lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
                     "a positive whole number of frames"),
    "min_box_area": (200, _number(0), "an area >= 0, pixels squared"),
    "vertical_ratio": (1.6, _number(), "a width / height ratio (0 or less: no limit)"),
    "use_byte": (False, lambda v: v is False, "false (ByteTrack association without embeddings: use the "
                 "detector and tracker stages instead)"),
    "motion": ("KalmanFilter", lambda v: v == "KalmanFilter", "KalmanFilter"),
}
# Keys JDETracker's exports may hold that play no part here: the class count (each class is
# tracked apart; streampose keeps persons only), the ReID crop size of two-stage trackers and
# the thresholds of use_byte.
_IGNORED_KEYS = frozenset({"num_classes", "input_size", "match_thres", "low_conf_thres"})


@dataclass(frozen=True)
class JdeSettings:
    """How detections are matched to tracks; see the module docstring for each threshold.

    conf_thres:         detections scoring this or less are ignored, 0..1.
    det_thresh:         least score of a detection that starts a track, 0..1.
    tracked_thresh:     cost limit of the embedding matching (0.98 x distance + 0.02 x Kalman).
    r_tracked_thresh:   IoU distance limit for tracks matched at the previous frame.
    unconfirmed_thresh: IoU distance limit for tentative tracks.
    metric_type:        embedding distance, "euclidean" (0..2) or "cosine" (0..2).
    min_box_area:       boxes of this area or less are not published, pixels squared.
    vertical_ratio:     boxes wider than this times their height are not published; <= 0: no limit.
    max_age_s:          a confirmed track unmatched for longer is removed, seconds.
    min_hits:           matches before a track is confirmed.
    """

    conf_thres: float
    det_thresh: float
    tracked_thresh: float
    r_tracked_thresh: float
    unconfirmed_thresh: float
    metric_type: str
    min_box_area: float
    vertical_ratio: float
    max_age_s: float
    min_hits: int

    @classmethod
    def from_section(cls, section: Mapping | None, source: str, *, min_hits: int, max_age_s: float | None = None,
                     conf_threshold: float | None = None) -> JdeSettings:
        """The `tracker:` section of infer_cfg.yml `source`, validated; `max_age_s` (default:
        track_buffer frames at 30 fps, as PaddleDetection counts them) and `conf_threshold`
        (default: conf_thres) override the file."""
        if section is None:
            raise JdeConfigError(f"{source}: key 'tracker': missing; FairMOT and JDE exports carry their "
                                 "association settings there (PaddleDetection writes the JDETracker block of the "
                                 "training config, e.g. conf_thres, tracked_thresh, metric_type)")
        for key in section.keys() - _SECTION_KEYS.keys() - _IGNORED_KEYS:
            raise JdeConfigError(f"{source}: key 'tracker.{key}': not a JDETracker setting (known: "
                                 f"{', '.join(sorted(_SECTION_KEYS.keys() | _IGNORED_KEYS))})")
        values = {}
        for key, (default, check, expected) in _SECTION_KEYS.items():
            value = section.get(key, default)
            if not check(value):
                raise JdeConfigError(f"{source}: key 'tracker.{key}': expected {expected}, got {value!r}")
            values[key] = value
        return cls(
            conf_thres=float(values["conf_thres"] if conf_threshold is None else conf_threshold),
            det_thresh=float(values["det_thresh"]),
            tracked_thresh=float(values["tracked_thresh"]),
            r_tracked_thresh=float(values["r_tracked_thresh"]),
            unconfirmed_thresh=float(values["unconfirmed_thresh"]),
            metric_type=values["metric_type"],
            min_box_area=float(values["min_box_area"]),
            vertical_ratio=float(values["vertical_ratio"]),
            max_age_s=float(max_age_s if max_age_s is not None else values["track_buffer"] / TRACK_BUFFER_FPS),
            min_hits=min_hits,
        )


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows of `vectors` (N, D) scaled to length 1 (zero rows stay zero)."""
    vectors = np.asarray(vectors, np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def embedding_distance(tracks: np.ndarray, detections: np.ndarray, metric: str) -> np.ndarray:
    """(T, N) distance between unit embeddings tracks (T, D) and detections (N, D):
    euclidean sqrt(2 - 2 cos) or cosine 1 - cos, both 0..2."""
    cos = tracks @ detections.T
    if metric == "cosine":
        return np.maximum(1.0 - cos, 0.0)
    return np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))


def publishable(boxes: np.ndarray, settings: JdeSettings) -> np.ndarray:
    """(N,) bool: boxes (N, 4) larger than min_box_area and not wider than vertical_ratio allows,
    the filter PaddleDetection applies to the tracks it reports."""
    sides = np.maximum(boxes[:, 2:] - boxes[:, :2], 0)
    keep = sides[:, 0] * sides[:, 1] > settings.min_box_area
    if settings.vertical_ratio > 0:
        keep &= sides[:, 0] <= settings.vertical_ratio * sides[:, 1]
    return keep


class JdeTrack(Track):
    """A track with an appearance: `feature` (D,), the unit running mean of its embeddings."""

    def __init__(self, box: np.ndarray, time: float, embedding: np.ndarray):
        super().__init__(box, None, time)
        self.feature = unit(embedding)

    def observe_appearance(self, embedding: np.ndarray) -> None:
        self.feature = unit(FEATURE_MOMENTUM * self.feature + (1 - FEATURE_MOMENTUM) * unit(embedding))


class JdeTracker(Tracker):
    """The tracks of one stream, matched as PaddleDetection's JDETracker matches them.
    `params` is a JdeSettings; detections must carry embeddings."""

    params: JdeSettings
    tracks: list[JdeTrack]

    def _associate(self, detections: Observations, time: float) -> np.ndarray:
        settings = self.params
        candidates = np.flatnonzero(detections.scores > settings.conf_thres)
        confirmed = np.array([i for i, t in enumerate(self.tracks) if t.confirmed], np.int64)
        tentative = np.array([i for i, t in enumerate(self.tracks) if not t.confirmed], np.int64)

        cost, gated = self._appearance_cost(confirmed, candidates, detections)
        first = match(settings.tracked_thresh - cost, ~gated & (cost < settings.tracked_thresh))
        pairs = [np.stack([confirmed[first.pairs[:, 0]], candidates[first.pairs[:, 1]]], axis=1)]

        recent = confirmed[first.unmatched_tracks]
        recent = recent[np.array([self.tracks[i].was_matched for i in recent], bool)]
        left = candidates[first.unmatched_detections]
        second = self._overlap_match(recent, left, detections, settings.r_tracked_thresh)
        pairs.append(np.stack([recent[second.pairs[:, 0]], left[second.pairs[:, 1]]], axis=1))

        left = left[second.unmatched_detections]
        third = self._overlap_match(tentative, left, detections, settings.unconfirmed_thresh)
        pairs.append(np.stack([tentative[third.pairs[:, 0]], left[third.pairs[:, 1]]], axis=1))
        return np.concatenate(pairs)

    def _appearance_cost(self, tracks: np.ndarray, rows: np.ndarray,
                         detections: Observations) -> tuple[np.ndarray, np.ndarray]:
        """(cost, gated), each (len(tracks), len(rows)): the fused embedding and Kalman cost, and
        whether the pair lies beyond the Kalman gate."""
        if not len(tracks) or not len(rows):
            empty = np.zeros((len(tracks), len(rows)))
            return empty, empty.astype(bool)
        features = np.array([self.tracks[i].feature for i in tracks])
        distance = embedding_distance(features, unit(detections.embeddings[rows]), self.params.metric_type)
        kalman = np.array([self.tracks[i].kalman.mahalanobis_sq(detections.boxes[rows]) for i in tracks])
        cost = EMBEDDING_WEIGHT * distance + (1 - EMBEDDING_WEIGHT) * kalman
        return cost, kalman > GATE_CHI2_95

    def _overlap_match(self, tracks: np.ndarray, rows: np.ndarray, detections: Observations, limit: float) -> Matches:
        """Tracks to detections by the IoU of their predicted boxes, IoU distance below `limit`."""
        boxes = np.array([self.tracks[i].kalman.box for i in tracks]).reshape(-1, 4)
        iou = iou_matrix(boxes, detections.boxes[rows])
        return match(iou, 1.0 - iou < limit)

    def _observe(self, track: JdeTrack, detections: Observations, row: int, time: float) -> None:
        super()._observe(track, detections, row, time)
        track.observe_appearance(detections.embeddings[row])

    def _start(self, detections: Observations, unclaimed: np.ndarray, time: float) -> list[tuple[Track, int]]:
        settings = self.params
        eligible = unclaimed & (detections.scores > settings.conf_thres) & (detections.scores >= settings.det_thresh)
        born = []
        for row in np.flatnonzero(eligible):
            track = JdeTrack(detections.boxes[row], time, detections.embeddings[row])
            self.tracks.append(track)
            born.append((track, int(row)))
        return born
