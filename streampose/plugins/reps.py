"""The repetition counter: squats, push-ups, jumping jacks, lunges, sit-ups and burpees,
counted per tracked person.

Each frame, a person's confident keypoints give a few body signals that do not depend
on how large the person appears: joint angles in degrees, and lengths divided by the
person's own standing leg length or arm length (`body_signals`). Each signal is
low-passed over media time. An exercise gives some of them a zone in the rest position (standing, arms straight, feet
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
from typing import Literal, NamedTuple

import numpy as np
from pydantic import Field, model_validator

from streampose.frame import KEYPOINT_INDEX, Event, Frame
from streampose.plugins.base import Plugin, PluginParams, make_event


def _sides(joint: str) -> np.ndarray:
    """Keypoint indices of a joint's (left, right) pair."""
    return np.array([KEYPOINT_INDEX[f"left_{joint}"], KEYPOINT_INDEX[f"right_{joint}"]])


SHOULDER, ELBOW, WRIST, HIP, KNEE, ANKLE = map(_sides, ("shoulder", "elbow", "wrist", "hip", "knee", "ankle"))

# The body signals, in the order of the vector `body_signals` returns. "Body lengths" are the
# track's standing leg length (thigh + shin, the longest seen lately: `size_memory_s`), so a
# squat seen from the front, whose thighs point at the camera, still measures its hip drop.
SIGNALS = (
    "knee_angle_deg",      # hip-knee-ankle angle: 180 straight leg, ~50 at a deep squat's bottom
    "hip_height",          # hip above the ankle, in body lengths: 1 standing, ~0.4 thighs level, ~0 lying
    "torso_lean_deg",      # the torso's axis (hips to shoulders) from the image vertical: 0 upright, 90 lying
    "torso_offset",        # middle of the torso from above the ankle, sideways, in leg lengths: 0 balanced
    "body_elevation_deg",  # ankle-to-shoulder line above the horizontal: 90 standing, 0 lying flat
    "hip_angle_deg",       # shoulder-hip-knee angle: 180 straight body, ~90 sitting
    "elbow_angle_deg",     # shoulder-elbow-wrist angle: 180 straight arm
    "arm_elevation_deg",   # shoulder-to-wrist line from the torso's axis: 0 arms down, 180 overhead
    "feet_spread",         # distance between the ankles, in body lengths
    "knee_bend_deg",       # knee flexion seen from any side: 180 - knee angle, or the thigh's turn out of
                           # the image (arccos of thigh / shin, projected) when that is larger: 0 straight
    "arm_extension",       # wrist below shoulder / arm length (upper arm + forearm), mean of the arms:
                           # 1 a straight arm hanging or propping, ~0 shoulder down at the hand's height
    "shoulder_width",      # shoulder to shoulder, horizontal, in body lengths: ~0.4 facing the camera, ~0 side on
    "feet_width",          # ankles' horizontal distance / shoulders' horizontal distance: ~0.5 feet together
                           # facing the camera, ~2 a jumping jack's open position
    "arm_bend_deg",        # the arms' bend: 180 - elbow angle, or arccos(arm_extension) (a fold
                           # toward the camera) when that is larger: ~20 propping straight, ~100 at the bottom
    "torso_drop",          # hips below shoulders in the image / the arm's length: ~1.1 standing,
                           # ~0.3 a push-up from the side, <= 0 from a front camera above the floor
)
SIGNAL_INDEX = {name: i for i, name in enumerate(SIGNALS)}
_UP = np.array([0.0, -1.0])  # image y grows downwards


def _lengths(vectors: np.ndarray) -> np.ndarray:
    """np.linalg.norm(vectors, axis=-1), the same numbers (it computes them so) without its
    argument checks, which cost as much as the arithmetic on a person's few joints."""
    return np.sqrt(np.add.reduce(vectors * vectors, axis=-1))


def _mean(values: np.ndarray) -> np.ndarray:
    """values.mean(axis=0), the same numbers (the sum over the first axis / the count) without
    the method's overhead."""
    return np.add.reduce(values, axis=0) / len(values)


def _arccos_deg(cosine: np.ndarray) -> np.ndarray:
    """arccos in degrees of cosines clipped to -1..1 (np.clip's wrapper costs more than the two
    ufuncs; the sign of a clipped zero, where they differ, is lost in arccos)."""
    return np.degrees(np.arccos(np.minimum(np.maximum(cosine, -1.0), 1.0)))


def _between_deg(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angles between vectors u and v, (..., 2) each, in degrees."""
    return _arccos_deg((u * v).sum(-1) / np.maximum(_lengths(u) * _lengths(v), 1e-9))


def leg_length(keypoints: np.ndarray, min_confidence: float) -> float:
    """Thigh + shin in pixels, the mean over the sides whose hip, knee and ankle are confident;
    NaN if neither is."""
    xy, ok = keypoints[:, :2].astype(np.float64), keypoints[:, 2] >= min_confidence
    sides = ok[HIP] & ok[KNEE] & ok[ANKLE]
    if not sides.any():
        return math.nan
    lengths = _lengths(xy[KNEE] - xy[HIP]) + _lengths(xy[ANKLE] - xy[KNEE])
    return float(_mean(lengths[sides]))


def body_signals(keypoints: np.ndarray, min_confidence: float, body_length: float | None = None) -> np.ndarray:
    """The `SIGNALS` of one person, shape (len(SIGNALS),), NaN where a signal's keypoints
    are not confident. keypoints: (17, 3) x, y in pixels (y down), confidence 0..1.
    body_length: the person's standing leg length in pixels (the plugin keeps it per track);
    None = this frame's own leg length.

    A per-side signal is the mean over the sides whose keypoints are all confident, so a
    side view with the far limbs hidden still gives it; the arm signal takes the better-seen arm."""
    xy = keypoints[:, :2].astype(np.float64)
    conf = keypoints[:, 2]
    ok = conf >= min_confidence
    shoulder, elbow, wrist, hip, knee, ankle = (xy[j] for j in (SHOULDER, ELBOW, WRIST, HIP, KNEE, ANKLE))
    thigh, shin = _lengths(knee - hip), _lengths(ankle - knee)
    leg = np.maximum(thigh + shin, 1.0)
    legs_ok = ok[HIP] & ok[KNEE] & ok[ANKLE]
    torso_ok = ok[SHOULDER] & ok[HIP]
    arms_ok = ok[SHOULDER] & ok[ELBOW] & ok[WRIST]
    torso_seen, arms_seen = any(torso_ok), any(arms_ok)
    if body_length is None or not np.isfinite(body_length):
        body_length = float(_mean(leg[legs_ok])) if any(legs_ok) else math.nan
    body_length = max(body_length, 1.0) if np.isfinite(body_length) else math.nan
    # The torso's axis, shoulders to hips: the mean of the sides' lines is the midline in a front view.
    torso_down = _mean((hip - shoulder)[torso_ok]) if torso_seen else np.full(2, np.nan)
    body = shoulder - ankle
    # The joint angles hip-knee-ankle, shoulder-hip-knee and shoulder-elbow-wrist, and the arm's
    # from the torso's axis, per side: one set of numpy calls instead of four.
    knee_angle, hip_angle, elbow_angle, arm_elevation = _between_deg(
        np.stack([hip - knee, shoulder - hip, shoulder - elbow, np.broadcast_to(torso_down, (2, 2))]),
        np.stack([ankle - knee, knee - hip, wrist - elbow, wrist - shoulder]))
    # A thigh pointing at the camera looks shorter than the shin (about as long in life).
    foreshortened = _arccos_deg(np.maximum(thigh / np.maximum(shin, 1.0), 0.0))
    per_side = np.array([   # (8, 2): a signal per row, a side per column
        knee_angle,
        (ankle[:, 1] - hip[:, 1]) / body_length,
        np.abs((shoulder[:, 0] + hip[:, 0]) / 2 - ankle[:, 0]) / leg,
        np.degrees(np.arctan2(-body[:, 1], np.abs(body[:, 0]))),
        hip_angle,
        elbow_angle,
        arm_elevation,
        np.maximum(180.0 - knee_angle, foreshortened),
    ])
    valid = np.array([legs_ok, legs_ok, torso_ok & legs_ok, ok[SHOULDER] & ok[ANKLE], torso_ok & ok[KNEE],
                      arms_ok, torso_seen & ok[SHOULDER] & ok[WRIST], legs_ok])
    count = valid.sum(axis=1)
    means = np.where(valid, per_side, 0.0).sum(axis=1) / np.maximum(count, 1)
    means[count == 0] = np.nan
    # The arms, the mean over the confident ones. Taking only the better-seen arm flips between
    # the arms of a side plank (one propping, ~25, one bent, ~80) and counts it as push-ups.
    arm_extension = torso_drop = arm_bend = math.nan
    if arms_seen:
        arm = np.maximum(_lengths(elbow - shoulder) + _lengths(wrist - elbow), 1.0)
        extension = (wrist[:, 1] - shoulder[:, 1]) / arm
        bend = np.maximum(180.0 - per_side[5], _arccos_deg(extension))
        arm_extension, arm_bend = float(_mean(extension[arms_ok])), float(_mean(bend[arms_ok]))
        if torso_seen:
            torso_drop = float(_mean((hip[:, 1] - shoulder[:, 1])[torso_ok]) / _mean(arm[arms_ok]))
    feet_ok = bool(ok[ANKLE].all())
    shoulders_ok = bool(ok[SHOULDER].all())
    feet_spread = np.linalg.norm(ankle[0] - ankle[1]) / body_length if feet_ok else np.nan
    shoulder_px = abs(shoulder[0, 0] - shoulder[1, 0])
    shoulder_width = shoulder_px / body_length if shoulders_ok else np.nan
    feet_width = abs(ankle[0, 0] - ankle[1, 0]) / max(shoulder_px, 1.0) if feet_ok and shoulders_ok else np.nan
    torso_lean = _between_deg(-torso_down, _UP)
    knee_angle, hip_height, torso_offset, body_elevation, hip_angle, elbow_angle, arm_elevation, knee_bend = means
    return np.array([knee_angle, hip_height, torso_lean, torso_offset, body_elevation, hip_angle, elbow_angle,
                     arm_elevation, feet_spread, knee_bend, arm_extension, shoulder_width, feet_width, arm_bend,
                     torso_drop])


ANY = (-math.inf, math.inf)  # a zone that does not constrain its signal


@dataclass(frozen=True)
class Exercise:
    """An exercise as zones of body signals.

    signals:  (M,) indices into SIGNALS.
    rest:     (M, 2) [low, high] of each signal in the rest position; ANY = not looked at.
    active:   (M, 2) [low, high] of each signal in the active position; ANY = not looked at.
              A signal with the same zone in both is a posture the exercise keeps throughout.
    optional: (M,) signals looked at only when seen (their keypoints confident): a posture
              check that a view hiding those joints must not prevent.
    """

    name: str
    signals: np.ndarray
    rest: np.ndarray
    active: np.ndarray
    optional: np.ndarray

    @classmethod
    def of(cls, name: str, zones: dict[str, tuple[tuple[float, float], tuple[float, float]]],
           optional: tuple[str, ...] = ()) -> Exercise:
        return cls(name, np.array([SIGNAL_INDEX[s] for s in zones]),
                   np.array([rest for rest, _ in zones.values()], np.float64),
                   np.array([active for _, active in zones.values()], np.float64),
                   np.array([s in optional for s in zones]))

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
        """(M,) signals whose active zone lies above their rest zone (or, with no rest zone, is
        open upwards)."""
        open_up = ~self.needs_rest & np.isfinite(self.active[:, 0]) & np.isposinf(self.active[:, 1])
        return (self.active[:, 0] >= self.rest[:, 1]) | open_up


EXERCISE_NAMES = ("squat", "push_up", "jumping_jack", "lunge", "sit_up", "burpee")
INF = math.inf


def make_exercises(p: RepParams) -> dict[str, Exercise]:
    """The exercises' zones: (rest [low, high], active [low, high]); the gaps between them are
    the hysteresis. The boundaries that decide counts on the labelled clips are parameters
    (chosen by leave-one-source-out cross-validation: docs/fitness.md); the others are
    postures with wide margins, measured numbers in the comments."""
    return {e.name: e for e in (
        Exercise.of("squat", {
            # Side view: knee angle 180 -> ~55 (bend ~125) at the bottom; front view: the thighs turn
            # to the camera (thigh/shin ~0.3 projected, bend ~70) while the knee angle stays ~170.
            "knee_bend_deg": ((0, 40), (p.squat_knee_bend_deg, 180)),
            "hip_height": ((0.8, INF), (-INF, p.squat_depth)),   # hips dropped by 40% of the leg or more
            "torso_lean_deg": ((0, 70), (0, 70)),                # upright enough: not lying or crawling
            # Balanced over the feet: not sitting on a chair (~0.45 seated) nor lunging (0.35-0.45).
            "torso_offset": ((0, 0.25), (0, 0.25)),
        }),
        Exercise.of("push_up", {
            # The arms that prop the body, seen from any side: straight at the top (side 8-35, front ~5),
            # bent ~90-170 at the bottom. No ankles needed (a floor camera cuts them off).
            "arm_bend_deg": ((0, p.push_up_top_deg), (p.push_up_bottom_deg, 180)),
            # Not upright: from the side the torso lies near level, from a camera in front it is
            # foreshortened; standing, sitting or kneeling the hips hang a torso's length below.
            # At the top the arms hold the shoulders at least as high as the hips (side 0.15-0.4,
            # front camera 0.05-0.45); a forearm plank's shoulders are below its hips (-0.1 to -0.4).
            "torso_drop": ((0.0, p.push_up_torso_drop), (-INF, p.push_up_torso_drop)),
            # A straight body (if the knees are seen): push-ups 147-179 (the oblique gym clip's misplaced
            # knees read 18-30 for ~0.16 s at three tops: posture_grace_s); on all fours 93-142.
            "hip_angle_deg": ((145, 180), (145, 180)),
        }, optional=("hip_angle_deg",)),
        Exercise.of("jumping_jack", {
            "arm_elevation_deg": ((0, 60), (130, 180)),
            "feet_spread": ((0, 0.5), (0.75, INF)),
            # The legs open sideways, wider than the shoulders, with the arms: a jump with the arms up
            # (a jump shot), a stride or a side view of split legs is not an open jack.
            "feet_width": (ANY, (p.jumping_jack_feet_width, INF)),   # open: 1.9-2.6; a jump shot ~1
            "shoulder_width": ((0.15, INF), (0.15, INF)),   # facing the camera (side on: ~0.05)
            "torso_lean_deg": ((0, 30), (0, 30)),
        }),
        Exercise.of("lunge", {
            # One foot steps out: the ankles a leg length apart (side view) with the hips down.
            "feet_spread": ((0, 0.35), (p.lunge_split, INF)),
            "hip_height": ((0.75, INF), (-INF, p.lunge_depth)),
            "knee_bend_deg": ((0, 40), (60, 180)),
            "torso_lean_deg": ((0, 40), (0, 40)),                 # upright throughout
        }),
        Exercise.of("sit_up", {
            # Lying on the back (torso horizontal) -> torso raised; the rep's middle is the up position.
            "torso_lean_deg": ((p.sit_up_lying_deg, 180), (0, p.sit_up_up_deg)),
            "hip_height": ((-0.4, 0.4), (-0.4, 0.4)),             # hips down at the feet's height
            "knee_angle_deg": ((0, 140), (0, 140)),               # knees bent
        }),
        Exercise.of("burpee", {
            # Standing tall -> a plank on straight arms (hips down, torso near horizontal) -> standing.
            "torso_lean_deg": ((0, 30), (p.burpee_plank_lean_deg, 180)),
            "hip_height": ((0.8, INF), (-INF, 0.5)),
            "knee_bend_deg": ((0, 40), ANY),
            "arm_extension": (ANY, (0.6, INF)),                   # propped on straight arms (~0.97), not lying
            # Standing: the hips a torso below the shoulders (1.0-1.4); a push-up seen from a camera
            # in front above the floor looks upright (lean ~0) but its torso is foreshortened (<0.5).
            "torso_drop": ((0.75, INF), ANY),
        }),
    )}


class RepParams(PluginParams):
    exercise: Literal[("auto", *EXERCISE_NAMES)] = Field(
        "auto", description="The exercise to count, or auto: recognise it from the motion (squat, push_up, "
        "jumping_jack, lunge, sit_up or burpee); auto counts nothing until `auto_confirm_reps` repetitions of "
        "one exercise were seen in a row.")
    min_rep_s: float = Field(0.3, gt=0, le=60, description="Shortest repetition that counts, seconds of media "
                             "time from leaving the rest position to being back in it.")
    max_rep_s: float = Field(8.0, gt=0, le=600, description="Longest repetition that counts, seconds; one "
                             "still unfinished after this long is abandoned.")
    max_gap_s: float = Field(0.7, gt=0, le=60, description="Signals missing (keypoints not confident) for "
                             "longer than this, seconds, break the repetition in progress: the person must be "
                             "seen at rest again. 0.7 lets a 5 fps camera miss two frames in a row (a sit-up's "
                             "lying frames: 0.5 counted 0 of 9 sit-ups at 5 fps, 0.7 and 0.9 count 8; counts at "
                             "the clips' own rates and at 10 fps unchanged).")
    smoothing_s: float = Field(0.05, ge=0, le=5, description="Time constant of the low-pass filter on the body "
                               "signals, seconds; 0 = none (a smoother stage before the plugin smooths the "
                               "keypoints themselves).")
    min_confidence: float = Field(0.3, ge=0, le=1, description="Keypoints less confident than this are not used.")
    auto_confirm_reps: int = Field(2, ge=1, le=20, description="With exercise auto: repetitions of one exercise "
                                   "in a row (each starting within max_rep_s of the previous one's end) before "
                                   "it is taken as the track's exercise and they are counted.")
    size_memory_s: float = Field(10.0, gt=0, le=600, description="Body lengths are the track's longest leg "
                                 "(thigh + shin) seen lately: it decays by 1/e over this many seconds, so a "
                                 "person walking away is re-measured while a squat's foreshortened thighs are not.")
    posture_grace_s: float = Field(0.5, ge=0, le=5, description="Out of an exercise's posture (e.g. the "
                                   "push-up's straight body) for longer than this, seconds, drops the repetition "
                                   "in progress; shorter stretches (a keypoint misplaced for a frame or two) are "
                                   "passed over.")
    squat_depth: float = Field(0.6, gt=0, lt=0.8, description="Squat bottom: hips at most this high above the "
                               "ankles, in body lengths (standing: 1).")
    squat_knee_bend_deg: float = Field(70.0, gt=40, le=150, description="Squat bottom: knee flexion at least "
                                       "this, degrees, seen in the knee angle (side) or the thighs' turn toward "
                                       "the camera (front).")
    push_up_top_deg: float = Field(38.0, ge=0, lt=180, description="Push-up top: the arms (the mean of those "
                                   "seen) bent at most this much, degrees (180 - elbow angle, or the arm's fold "
                                   "toward the camera).")
    push_up_bottom_deg: float = Field(70.0, gt=0, le=180, description="Push-up bottom: the arm bent at least "
                                      "this much, degrees. Must be above push_up_top_deg.")
    push_up_torso_drop: float = Field(0.6, gt=-1, le=2, description="Push-up posture: the hips at most this "
                                      "far below the shoulders in the image, in arm lengths (standing 1.0-1.4, a "
                                      "push-up seen from the side 0.15-0.42, from the front 0.05-0.45); at the top "
                                      "the shoulders must also be no lower than the hips.")
    jumping_jack_feet_width: float = Field(1.5, gt=1, le=5, description="Jumping-jack open position: ankles at "
                                           "least this many shoulder widths apart, horizontally.")
    lunge_split: float = Field(0.6, gt=0.35, le=2, description="Lunge bottom: ankles at least this many body "
                               "lengths apart; a squat's feet stay closer.")
    lunge_depth: float = Field(0.6, gt=0, lt=0.75, description="Lunge bottom: hips at most this high above the "
                               "(rear) ankle, in body lengths.")
    sit_up_lying_deg: float = Field(60.0, gt=0, le=90, description="Sit-up rest: lying, the torso at least this "
                                    "far from upright, degrees.")
    sit_up_up_deg: float = Field(35.0, ge=0, lt=90, description="Sit-up (or crunch) up position: the torso at "
                                 "most this far from upright, degrees. Must be below sit_up_lying_deg.")
    burpee_plank_lean_deg: float = Field(65.0, gt=30, le=90, description="Burpee bottom: the torso at least "
                                         "this far from upright, degrees, propped on straight arms.")

    @model_validator(mode="after")
    def _durations(self):
        if self.min_rep_s >= self.max_rep_s:
            raise ValueError(f"min_rep_s ({self.min_rep_s}) must be below max_rep_s ({self.max_rep_s})")
        if self.push_up_bottom_deg <= self.push_up_top_deg:
            raise ValueError(f"push_up_bottom_deg ({self.push_up_bottom_deg}) must be above push_up_top_deg "
                             f"({self.push_up_top_deg})")
        if self.sit_up_up_deg >= self.sit_up_lying_deg:
            raise ValueError(f"sit_up_up_deg ({self.sit_up_up_deg}) must be below sit_up_lying_deg "
                             f"({self.sit_up_lying_deg})")
        return self


EXERCISES = make_exercises(RepParams())   # with the default parameters


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
    out_since: float | None = None  # first frame of the current stretch out of the exercise's posture

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
    body_length: float = math.nan   # pixels: the longest leg (thigh + shin) seen lately, decaying
    body_time: float = -math.inf    # media time of its last update


class _Reading(NamedTuple):
    """What one frame's signals show of one exercise.

    values:         (M,) its signals, NaN where not observed this frame.
    rest_seen:      every signal its rest position looks at was observed (or is optional).
    active_seen:    the same for its active position.
    out_of_posture: an observed signal is outside both zones (`Exercise.hull`).
    at_rest:        rest_seen and every observed signal the rest position looks at is in its zone.
    active:         the same for the active position.
    """

    values: np.ndarray
    rest_seen: bool
    active_seen: bool
    out_of_posture: bool
    at_rest: bool
    active: bool


class _Zones:
    """The zones of several exercises side by side, so that a frame's signals are read against
    all of them in a dozen numpy calls instead of a dozen per exercise: with `_lengths`, the
    plugin's CPU per frame of squat_side_view (one person, the six exercises of `auto`) went
    from 0.35 to 0.26 ms."""

    def __init__(self, exercises: list[Exercise]):
        def joined(name: str) -> np.ndarray:
            return np.concatenate([getattr(e, name) for e in exercises])
        self.signals = joined("signals")
        self.starts = np.cumsum([0] + [len(e.signals) for e in exercises[:-1]])
        self.ends = np.cumsum([len(e.signals) for e in exercises])
        self.rest, self.active, self.hull = joined("rest"), joined("active"), joined("hull")
        self.optional = joined("optional")
        self.rest_ignored, self.active_ignored = ~joined("needs_rest"), ~joined("needs_active")
        self.rest_free = self.rest_ignored | self.optional      # need not be observed for rest
        self.active_free = self.active_ignored | self.optional

    def read(self, state: TrackReps, now: float) -> list[_Reading]:
        """Each exercise's reading of the track's signals at media time `now` (those observed
        at `now` are fresh)."""
        fresh = state.signal_times[self.signals] == now
        values = np.where(fresh, state.signals[self.signals], np.nan)   # NaN fails every comparison
        unseen = self.optional & ~fresh   # optional signals not seen this frame pass
        every = np.logical_and.reduceat
        rest_seen = every(fresh | self.rest_free, self.starts)
        active_seen = every(fresh | self.active_free, self.starts)
        outside = np.logical_or.reduceat(fresh & ((values < self.hull[:, 0]) | (values > self.hull[:, 1])),
                                         self.starts)
        at_rest = rest_seen & every(((values >= self.rest[:, 0]) & (values <= self.rest[:, 1]))
                                    | self.rest_ignored | unseen, self.starts)
        active = active_seen & every(((values >= self.active[:, 0]) & (values <= self.active[:, 1]))
                                     | self.active_ignored | unseen, self.starts)
        return [_Reading(values[start:end], *flags)
                for start, end, *flags in zip(self.starts, self.ends, rest_seen.tolist(), active_seen.tolist(),
                                              outside.tolist(), at_rest.tolist(), active.tolist())]


class RepCounter(Plugin):
    """Counts repetitions per track: a `rep` event for each, and {"exercise", "reps"} in
    the person's annotations once the track's exercise is known."""

    Params = RepParams
    params: RepParams

    def __init__(self, params: RepParams):
        super().__init__(params)
        exercises = make_exercises(params)
        names = list(exercises) if params.exercise == "auto" else [params.exercise]
        self.exercises = [exercises[name] for name in names]
        self._zones = _Zones(self.exercises)

    def new_track(self) -> TrackReps:
        return TrackReps(signals=np.full(len(SIGNALS), np.nan), signal_times=np.full(len(SIGNALS), -np.inf),
                         cycles={e.name: Cycle() for e in self.exercises},
                         exercise=None if self.params.exercise == "auto" else self.params.exercise)

    def on_person(self, frame: Frame, i: int, state: TrackReps) -> list[Event]:
        if frame.persons.keypoints is None:
            raise ValueError("reps needs keypoints: put a keypoints stage before this plugin")
        now = frame.media_time
        keypoints = frame.persons.keypoints[i]
        self._measure(state, leg_length(keypoints, self.params.min_confidence), now)
        self._smooth(state, body_signals(keypoints, self.params.min_confidence, state.body_length), now)
        events = []
        for exercise, found in zip(self.exercises, self._zones.read(state, now)):
            rep = self._step(exercise, state.cycles[exercise.name], found, now)
            if rep is not None:
                events += self._count(frame, i, state, rep)
        if state.exercise is not None:
            frame.persons.annotations[i].update(exercise=state.exercise, reps=state.counts.get(state.exercise, 0))
        return events

    def _measure(self, state: TrackReps, leg: float, now: float) -> None:
        """The track's body length: the longest leg seen, decaying by 1/e per size_memory_s
        (a person walking away shrinks in the image; a squat's thighs turning to the camera
        only for a second or two)."""
        elapsed = now - state.body_time
        if not math.isfinite(state.body_length) or elapsed < 0:
            state.body_length = leg
        else:
            decayed = state.body_length * math.exp(-elapsed / self.params.size_memory_s)
            state.body_length = max(decayed, leg) if math.isfinite(leg) else decayed
        state.body_time = now

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

    def _step(self, exercise: Exercise, cycle: Cycle, found: _Reading, now: float) -> Rep | None:
        """Advance one exercise's cycle by a frame (what the frame's signals show of it: `found`);
        the repetition it completes, if any."""
        params = self.params
        if now - cycle.last_seen > params.max_gap_s or (
                cycle.phase == "active" and now - cycle.rest_time > params.max_rep_s):
            cycle.reset()
        if not (found.rest_seen or found.active_seen):
            return None
        cycle.last_seen = now
        if found.out_of_posture:
            # Out of the exercise's posture: for longer than posture_grace_s, the repetition is
            # dropped; shorter, the frame is passed over (a knee misplaced for a frame or two).
            cycle.out_since = now if cycle.out_since is None else cycle.out_since
            if now - cycle.out_since > params.posture_grace_s:
                cycle.reset()
            return None
        cycle.out_since = None
        values = found.values
        rep = None
        if found.at_rest:
            if cycle.phase == "active" and params.min_rep_s <= now - cycle.rest_time <= params.max_rep_s:
                rep = self._finish(exercise, cycle, now)
            cycle.phase, cycle.rest_time = "rest", now
        elif found.active and cycle.phase != "unknown":
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
