"""The repetition counter: squats, push-ups and jumping jacks, counted per tracked person.

Each frame, a person's confident keypoints give a few body signals that do not depend
on how large the person appears: joint angles in degrees, and lengths divided by the
person's own leg length (`body_signals`). Each signal is low-passed over media time. An
exercise gives some of them a zone in the rest position (standing, arms straight, feet
together) and a zone in the active position (squat bottom, chest down, arms overhead and
feet wide), with a gap between the zones (hysteresis):

    rest --(every signal in its active zone)--> active --(every signal in its rest zone)--> rest

A repetition counts when a track goes from rest to active and back to rest, and the time
from its last rest frame before to its first rest frame after is within [min_rep_s,
max_rep_s]. Only full cycles count: a track first seen mid-repetition, or whose signals
are missing for longer than `max_gap_s` (keypoints not confident, person hidden), or that
leaves the exercise's posture (a squatter lying down, a push-up turning into standing),
must be seen at rest again before a repetition counts.

With `exercise: auto` every exercise is followed at once, and a track's exercise is the
one that first completes `auto_confirm_reps` repetitions in a row; those are counted
together, and the following ones one by one. Another exercise completing as many in a
row takes over (each exercise keeps its own count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from streampose.frame import KEYPOINT_INDEX, Event, Frame
from streampose.plugins.base import Plugin, PluginParams, make_event


def _sides(joint: str) -> np.ndarray:
    """Keypoint indices of a joint's (left, right) pair."""
    return np.array([KEYPOINT_INDEX[f"left_{joint}"], KEYPOINT_INDEX[f"right_{joint}"]])


SHOULDER, ELBOW, WRIST, HIP, KNEE, ANKLE = map(_sides, ("shoulder", "elbow", "wrist", "hip", "knee", "ankle"))

# The body signals, in the order of the vector `body_signals` returns.
SIGNALS = (
    "knee_angle_deg",      # hip-knee-ankle angle: 180 straight leg, ~50 at a deep squat's bottom
    "hip_height",          # hip above the ankle, in leg lengths (thigh + shin): 1 standing, ~0.4 thighs level
    "torso_lean_deg",      # the torso's axis (hips to shoulders) from the image vertical: 0 upright, 90 lying
    "torso_offset",        # middle of the torso from above the ankle, sideways, in leg lengths: 0 balanced
    "body_elevation_deg",  # ankle-to-shoulder line above the horizontal: 90 standing, 0 lying flat
    "hip_angle_deg",       # shoulder-hip-knee angle: 180 straight body, ~90 sitting
    "elbow_angle_deg",     # shoulder-elbow-wrist angle: 180 straight arm
    "arm_elevation_deg",   # shoulder-to-wrist line from the torso's axis: 0 arms down, 180 overhead
    "feet_spread",         # distance between the ankles, in leg lengths (hip to ankle)
)
SIGNAL_INDEX = {name: i for i, name in enumerate(SIGNALS)}
_UP = np.array([0.0, -1.0])  # image y grows downwards


def _between_deg(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angles between vectors u and v, (..., 2) each, in degrees."""
    cosine = (u * v).sum(-1) / np.maximum(np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1), 1e-9)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def _angle_deg(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Angles a-b-c at b in degrees; a, b, c: (..., 2) points."""
    return _between_deg(a - b, c - b)


def body_signals(keypoints: np.ndarray, min_confidence: float) -> np.ndarray:
    """The `SIGNALS` of one person, shape (len(SIGNALS),), NaN where a signal's keypoints
    are not confident. keypoints: (17, 3) x, y in pixels (y down), confidence 0..1.

    A per-side signal is the mean over the sides whose keypoints are all confident, so a
    side view with the far limbs hidden still gives it."""
    xy = keypoints[:, :2].astype(np.float64)
    ok = keypoints[:, 2] >= min_confidence
    shoulder, elbow, wrist, hip, knee, ankle = (xy[j] for j in (SHOULDER, ELBOW, WRIST, HIP, KNEE, ANKLE))
    leg_length = np.maximum(np.linalg.norm(knee - hip, axis=-1) + np.linalg.norm(ankle - knee, axis=-1), 1.0)
    legs_ok = ok[HIP] & ok[KNEE] & ok[ANKLE]
    torso_ok = ok[SHOULDER] & ok[HIP]
    # The torso's axis, shoulders to hips: the mean of the sides' lines is the midline in a front view.
    torso_down = (hip - shoulder)[torso_ok].mean(axis=0) if torso_ok.any() else np.full(2, np.nan)
    body = shoulder - ankle
    per_side = np.array([   # (7, 2): a signal per row, a side per column
        _angle_deg(hip, knee, ankle),
        (ankle[:, 1] - hip[:, 1]) / leg_length,
        np.abs((shoulder[:, 0] + hip[:, 0]) / 2 - ankle[:, 0]) / leg_length,
        np.degrees(np.arctan2(-body[:, 1], np.abs(body[:, 0]))),
        _angle_deg(shoulder, hip, knee),
        _angle_deg(shoulder, elbow, wrist),
        _between_deg(torso_down, wrist - shoulder),
    ])
    valid = np.array([legs_ok, legs_ok, torso_ok & legs_ok, ok[SHOULDER] & ok[ANKLE], torso_ok & ok[KNEE],
                      ok[SHOULDER] & ok[ELBOW] & ok[WRIST], torso_ok.any() & ok[SHOULDER] & ok[WRIST]])
    count = valid.sum(axis=1)
    means = np.where(valid, per_side, 0.0).sum(axis=1) / np.maximum(count, 1)
    means[count == 0] = np.nan
    hip_to_ankle = np.linalg.norm(ankle - hip, axis=-1).mean()
    feet_ok = ok[ANKLE].all() and ok[HIP].all() and hip_to_ankle >= 1.0
    feet_spread = np.linalg.norm(ankle[0] - ankle[1]) / hip_to_ankle if feet_ok else np.nan
    torso_lean = _between_deg(-torso_down, _UP)
    knee_angle, hip_height, torso_offset, body_elevation, hip_angle, elbow_angle, arm_elevation = means
    return np.array([knee_angle, hip_height, torso_lean, torso_offset, body_elevation, hip_angle, elbow_angle,
                     arm_elevation, feet_spread])


ANY = (-math.inf, math.inf)  # a zone that does not constrain its signal


@dataclass(frozen=True)
class Exercise:
    """An exercise as zones of body signals.

    signals: (M,) indices into SIGNALS.
    rest:    (M, 2) [low, high] of each signal in the rest position; ANY = not looked at.
    active:  (M, 2) [low, high] of each signal in the active position; ANY = not looked at.
             A signal with the same zone in both is a posture the exercise keeps throughout.
    """

    name: str
    signals: np.ndarray
    rest: np.ndarray
    active: np.ndarray

    @classmethod
    def of(cls, name: str, zones: dict[str, tuple[tuple[float, float], tuple[float, float]]]) -> Exercise:
        return cls(name, np.array([SIGNAL_INDEX[s] for s in zones]),
                   np.array([rest for rest, _ in zones.values()], np.float64),
                   np.array([active for _, active in zones.values()], np.float64))

    @cached_property
    def needs_rest(self) -> np.ndarray:
        """(M,) signals the rest position looks at."""
        return np.isfinite(self.rest).any(axis=1)

    @cached_property
    def needs_active(self) -> np.ndarray:
        """(M,) signals the active position looks at."""
        return np.isfinite(self.active).any(axis=1)

    @cached_property
    def hull(self) -> np.ndarray:
        """(M, 2) the span of both zones: outside it the person is not doing this exercise."""
        return np.stack([np.minimum(self.rest[:, 0], self.active[:, 0]),
                         np.maximum(self.rest[:, 1], self.active[:, 1])], axis=1)

    @cached_property
    def motion(self) -> np.ndarray:
        """(M,) signals that move into the active position (its range of motion)."""
        return self.needs_active & np.any(self.rest != self.active, axis=1)

    @cached_property
    def rising(self) -> np.ndarray:
        """(M,) signals whose active zone lies above their rest zone."""
        return self.active[:, 0] >= self.rest[:, 1]


# Zones: (rest [low, high], active [low, high]); the gaps between them are the hysteresis.
EXERCISES = {e.name: e for e in (
    Exercise.of("squat", {
        "knee_angle_deg": ((150, 180), (0, 110)),
        "hip_height": ((0.8, math.inf), (-math.inf, 0.6)),  # hips dropped by 40% of the leg length or more
        "torso_lean_deg": ((0, 70), (0, 70)),               # upright enough: not lying or crawling
        "torso_offset": ((0, 0.25), (0, 0.25)),             # balanced over the feet: not sitting on a chair
    }),
    Exercise.of("push_up", {
        "elbow_angle_deg": ((145, 180), ANY),               # top: arms straight (hidden under the body at the bottom)
        "body_elevation_deg": ((8, 35), (-math.inf, 5)),    # bottom: shoulders down to the feet's height
        "hip_angle_deg": ((140, 180), (140, 180)),          # a straight body, not sitting or kneeling
    }),
    Exercise.of("jumping_jack", {
        "arm_elevation_deg": ((0, 60), (130, 180)),
        "feet_spread": ((0, 0.5), (0.75, math.inf)),
        "torso_lean_deg": ((0, 30), (0, 30)),
    }),
)}


class RepParams(PluginParams):
    exercise: Literal[("auto", *EXERCISES)] = Field(
        "auto", description="The exercise to count, or auto: recognise it from the motion (squat, push_up or "
        "jumping_jack); auto counts nothing until `auto_confirm_reps` repetitions of one exercise were seen "
        "in a row.")
    min_rep_s: float = Field(0.3, gt=0, le=60, description="Shortest repetition that counts, seconds of media "
                             "time from leaving the rest position to being back in it.")
    max_rep_s: float = Field(8.0, gt=0, le=600, description="Longest repetition that counts, seconds; one "
                             "still unfinished after this long is abandoned.")
    max_gap_s: float = Field(0.5, gt=0, le=60, description="Signals missing (keypoints not confident) for "
                             "longer than this, seconds, break the repetition in progress: the person must be "
                             "seen at rest again.")
    smoothing_s: float = Field(0.05, ge=0, le=5, description="Time constant of the low-pass filter on the body "
                               "signals, seconds; 0 = none (a smoother stage before the plugin smooths the "
                               "keypoints themselves).")
    min_confidence: float = Field(0.3, ge=0, le=1, description="Keypoints less confident than this are not used.")
    auto_confirm_reps: int = Field(2, ge=1, le=20, description="With exercise auto: repetitions of one exercise "
                                   "in a row (each starting within max_rep_s of the previous one's end) before "
                                   "it is taken as the track's exercise and they are counted.")

    @model_validator(mode="after")
    def _durations(self):
        if self.min_rep_s >= self.max_rep_s:
            raise ValueError(f"min_rep_s ({self.min_rep_s}) must be below max_rep_s ({self.max_rep_s})")
        return self


@dataclass
class Rep:
    """One completed repetition. Times are media times, seconds."""

    exercise: str
    start: float     # the last rest frame before it
    end: float       # the first rest frame after it
    bottom: float    # the middle of the time spent in the active position
    range_of_motion: dict[str, float]

    def data(self, count: int) -> dict:
        return {"exercise": self.exercise, "count": count, "duration_s": round(self.end - self.start, 3),
                "start_time": round(self.start, 3), "bottom_time": round(self.bottom, 3),
                "range_of_motion": self.range_of_motion}


@dataclass
class Cycle:
    """One exercise's hysteresis state for one track. Times are media times, seconds."""

    phase: Literal["unknown", "rest", "active"] = "unknown"
    last_seen: float = -math.inf    # latest frame with the signals of a zone
    rest_time: float = -math.inf    # latest rest frame
    active_from: float = 0.0        # first and latest active frame of the repetition in progress
    active_to: float = 0.0
    extremes: np.ndarray | None = None   # (M,) furthest values into the active zone, this repetition
    pending: list[Rep] = field(default_factory=list)   # auto: repetitions in a row, not yet counted

    def reset(self) -> None:
        self.phase = "unknown"
        self.pending.clear()


@dataclass
class TrackReps:
    """One track's state."""

    signals: np.ndarray        # (S,) smoothed body signals, NaN until seen
    signal_times: np.ndarray   # (S,) media time each signal was last observed, seconds
    cycles: dict[str, Cycle]
    exercise: str | None       # the exercise being counted; None until auto recognises one
    counts: dict[str, int] = field(default_factory=dict)


class RepCounter(Plugin):
    """Counts repetitions per track: a `rep` event for each, and {"exercise", "reps"} in
    the person's annotations once the track's exercise is known."""

    Params = RepParams
    params: RepParams

    def __init__(self, params: RepParams):
        super().__init__(params)
        names = list(EXERCISES) if params.exercise == "auto" else [params.exercise]
        self.exercises = [EXERCISES[name] for name in names]

    def new_track(self) -> TrackReps:
        return TrackReps(signals=np.full(len(SIGNALS), np.nan), signal_times=np.full(len(SIGNALS), -np.inf),
                         cycles={e.name: Cycle() for e in self.exercises},
                         exercise=None if self.params.exercise == "auto" else self.params.exercise)

    def on_person(self, frame: Frame, i: int, state: TrackReps) -> list[Event]:
        if frame.persons.keypoints is None:
            raise ValueError("reps needs keypoints: put a keypoints stage before this plugin")
        now = frame.media_time
        self._smooth(state, body_signals(frame.persons.keypoints[i], self.params.min_confidence), now)
        events = []
        for exercise in self.exercises:
            rep = self._step(exercise, state.cycles[exercise.name], state, now)
            if rep is not None:
                events += self._count(frame, i, state, rep)
        if state.exercise is not None:
            frame.persons.annotations[i].update(exercise=state.exercise, reps=state.counts.get(state.exercise, 0))
        return events

    def _smooth(self, state: TrackReps, observed: np.ndarray, now: float) -> None:
        """First-order low-pass of each observed signal with time constant smoothing_s; a
        signal unseen for longer than max_gap_s (or with time going backwards) restarts."""
        seen = ~np.isnan(observed)
        elapsed = now - state.signal_times
        restart = np.isnan(state.signals) | (elapsed > self.params.max_gap_s) | (elapsed <= 0)
        if self.params.smoothing_s > 0:
            weight = np.where(restart, 1.0, -np.expm1(-np.maximum(elapsed, 0) / self.params.smoothing_s))
        else:
            weight = 1.0
        blended = np.where(restart, observed, state.signals + weight * (observed - state.signals))
        state.signals = np.where(seen, blended, state.signals)
        state.signal_times = np.where(seen, now, state.signal_times)

    def _step(self, exercise: Exercise, cycle: Cycle, state: TrackReps, now: float) -> Rep | None:
        """Advance one exercise's cycle by a frame; the repetition it completes, if any."""
        params = self.params
        if now - cycle.last_seen > params.max_gap_s or (
                cycle.phase == "active" and now - cycle.rest_time > params.max_rep_s):
            cycle.reset()
        fresh = state.signal_times[exercise.signals] == now
        rest_seen = bool(np.all(fresh | ~exercise.needs_rest))
        active_seen = bool(np.all(fresh | ~exercise.needs_active))
        if not (rest_seen or active_seen):
            return None
        cycle.last_seen = now
        values = np.where(fresh, state.signals[exercise.signals], np.nan)   # NaN fails every comparison
        if np.any(fresh & ((values < exercise.hull[:, 0]) | (values > exercise.hull[:, 1]))):
            cycle.reset()  # out of the exercise's posture
            return None
        at_rest = rest_seen and bool(np.all(((values >= exercise.rest[:, 0]) & (values <= exercise.rest[:, 1]))
                                            | ~exercise.needs_rest))
        active = active_seen and bool(np.all(((values >= exercise.active[:, 0])
                                              & (values <= exercise.active[:, 1])) | ~exercise.needs_active))
        rep = None
        if at_rest:
            if cycle.phase == "active" and params.min_rep_s <= now - cycle.rest_time <= params.max_rep_s:
                rep = self._finish(exercise, cycle, now)
            cycle.phase, cycle.rest_time = "rest", now
        elif active and cycle.phase != "unknown":
            if cycle.phase == "rest":
                cycle.phase, cycle.active_from, cycle.extremes = "active", now, values
            else:
                further = np.where(exercise.rising, values > cycle.extremes, values < cycle.extremes)
                cycle.extremes = np.where(further, values, cycle.extremes)
            cycle.active_to = now
        return rep

    @staticmethod
    def _finish(exercise: Exercise, cycle: Cycle, now: float) -> Rep:
        motion = {f"{'max' if exercise.rising[m] else 'min'}_{SIGNALS[exercise.signals[m]]}":
                  round(float(cycle.extremes[m]), 3) for m in np.flatnonzero(exercise.motion)}
        return Rep(exercise.name, start=cycle.rest_time, end=now, bottom=(cycle.active_from + cycle.active_to) / 2,
                   range_of_motion=motion)

    def _count(self, frame: Frame, i: int, state: TrackReps, rep: Rep) -> list[Event]:
        """Events for a completed repetition: counted at once if it is of the track's exercise,
        else (auto) held until enough in a row confirm its exercise."""
        if rep.exercise == state.exercise:
            counted = [rep]
        else:
            pending = state.cycles[rep.exercise].pending
            if pending and rep.start - pending[-1].end > self.params.max_rep_s:
                pending.clear()
            pending.append(rep)
            if len(pending) < self.params.auto_confirm_reps:
                return []
            state.exercise, counted = rep.exercise, list(pending)
            pending.clear()
        events = []
        for done in counted:
            count = state.counts[done.exercise] = state.counts.get(done.exercise, 0) + 1
            events.append(make_event(frame, i, "rep", **done.data(count)))
        return events
