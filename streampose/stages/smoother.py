"""The smoother stage: temporal filtering of each tracked person's joints (streampose.smoothing).

State is kept per (stream, track id) in the stage's state store (runtime/state.py: freed with
the track, at timeline breaks, and beyond `max_tracks` per stream, least recently seen first,
in case a tracker never ends its tracks): 2D keypoints always, 3D joints once a frame carries
them. Persons without a track id (UNTRACKED) pass through unsmoothed: with no identity
over time, filtering them would blend different people.

The smoothed arrays replace `persons.keypoints` / `persons.kpts3d` (new arrays, so a stage
still holding the previous ones, such as the keypoints stage keeping its stream's last
persons to refit skipped frames' boxes, never sees a half-written one); `pose_scores` becomes
the mean of the smoothed confidences.

The person size that makes the pixel filter scale-aware is the box diagonal: it changes
little when a person bends, sits or lies down, unlike the box height.

The OneEuro defaults (schema.Smoother) sit where the two demands of a 30 fps stream meet:
on a person 250 px in size moving slowly with 3 px of Gaussian noise per joint, jitter (mean
absolute second difference) falls by 74%, while a sudden 40 px (0.16 person sizes) step
reaches 90% within 67 ms (96% at 100 ms; single noisy joints 84% or more). Lowering beta or
min_cutoff_hz smooths more but follows steps later; smaller steps take longer (20 px: 93% at
100 ms), and steady motion lags by 1 / (2 pi (min_cutoff_hz + beta speed)) s: 100 ms at
0.2 person sizes per second, 64 ms at 0.5, 40 ms at 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streampose.frame import UNTRACKED, Frame
from streampose.graph import schema
from streampose.runtime.stage import Stage, StageContext
from streampose.smoothing import Ema, Filters, Hold, JointsState, OneEuro

UNIT_SCALE = 1.0   # metres: speed needs no normalising
MIN_PERSON_SIZE_PX = 1.0


@dataclass
class _Track:
    pixels: JointsState | None = None   # 2D keypoints
    metres: JointsState | None = None   # 3D joints


def _filter_kind(kind: str, params: schema.SmoothingPixels | schema.SmoothingMetres) -> OneEuro | Ema:
    if kind == "ema":
        return Ema(params.alpha)
    return OneEuro(params.min_cutoff_hz, params.beta, params.d_cutoff_hz)


def person_sizes(boxes: np.ndarray) -> np.ndarray:
    """(N,) box diagonals in pixels: a size that barely changes when a person bends or lies down."""
    sides = boxes[:, 2:] - boxes[:, :2]
    return np.maximum(np.hypot(sides[:, 0], sides[:, 1]), MIN_PERSON_SIZE_PX)


class SmootherStage(Stage):
    def __init__(self, stage_id: str, params: schema.Smoother, context: StageContext):
        super().__init__(stage_id, params, context)
        hold = Hold(params.min_confidence, params.hold_half_life_s, params.reset_gap_s)
        self.filters = {"pixels": Filters(_filter_kind(params.filter, params.pixels), hold),
                        "metres": Filters(_filter_kind(params.filter, params.metres), hold)}
        self.tracks = self.per_track(_Track, params.max_tracks)

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            self._smooth(frame)

    def _smooth(self, frame: Frame) -> None:
        persons = frame.persons
        # The first row of each id (a tracker gives distinct ids; anything else passes through).
        ids, first = np.unique(persons.track_ids, return_index=True)
        chosen = first[ids != UNTRACKED][:self.params.max_tracks]
        if not len(chosen) or (persons.keypoints is None and persons.kpts3d is None):
            return
        tracks = [self.tracks.get(frame, track_id) for track_id in persons.track_ids[chosen].tolist()]
        if persons.keypoints is not None:
            persons.keypoints = self._smoothed(tracks, "pixels", persons.keypoints, 2, chosen, frame.media_time,
                                               person_sizes(persons.boxes[chosen]))
            persons.pose_scores = persons.keypoints[..., 2].mean(axis=1)
        if persons.kpts3d is not None:
            persons.kpts3d = self._smoothed(tracks, "metres", persons.kpts3d, 3, chosen, frame.media_time,
                                            np.full(len(chosen), UNIT_SCALE))

    def _smoothed(self, tracks: list[_Track], unit: str, joints: np.ndarray, coords: int, chosen: np.ndarray,
                  media_time: float, scale: np.ndarray) -> np.ndarray:
        """A copy of `joints` ((N, K, coords + 1), last column confidence) with the chosen
        persons' joints smoothed."""
        states = []
        for track in tracks:
            state = getattr(track, unit)
            if state is None or state.x.shape[0] != joints.shape[1]:
                state = JointsState.fresh(joints.shape[1], coords)
                setattr(track, unit, state)
            states.append(state)
        values, confidence = self.filters[unit].update(states, joints[chosen, :, :coords], joints[chosen, :, coords],
                                                       media_time, scale)
        out = joints.copy()
        out[chosen, :, :coords] = values
        out[chosen, :, coords] = confidence
        return out
