"""The fall detector: a per-track state machine over body-size-normalised posture and motion.

A fall is a *transition*: a person seen upright goes down fast and stays down. Each frame of
a tracked person gives two measurements, both free of units so that one setting fits near
and far people, any image size and any frame rate:

- posture, 0 (upright) .. 1 (lying): the mean of the cues the visible body allows
  (`CUE_RAMPS`): the torso's tilt (turned from vertical in the image, or foreshortened when
  it points towards or away from the camera), head height above the hips, hip height above
  the ankles, the joints' vertical extent, the box's height and its aspect ratio. With 3D
  joints the torso angle and the heights are measured in 3D along the person's up direction,
  the hips' height above the ground plane (both learnt while the person stands).
- descent, 0..1: how deep (`min_drop`) and how fast (`min_speed`) the body's centres
  (shoulders, hips, box) dropped since the person was last upright within `fall_window_s`.
  The window slides with every frame and is measured in media time, so a 3 fps stream and
  a 60 fps one see the same fall.

Heights are in body heights. Body height is not read from the box (which shrinks when a
person sits or lies and is cut by the frame edge): each frame estimates it from the lengths
of the visible limb and torso segments divided by their share of standing height, and the
track keeps the median of the last `height_memory_s` of estimates taken while it was not
down; after a confirmed fall, until the person is on their feet again, the height they stood
at (their upright reference's). Keypoints outside the frame or less confident than `min_confidence` are ignored,
and cues needing them are left out of the mean: legs cut by the frame edge, a face turned
away, a box cut at the top or bottom each remove cues, not the person.

fall_score = min(descent, posture), a fuzzy "and" (each is 0.5 at its thresholds), so the
score passes 0.5 exactly when a deep, fast drop ends in a lying posture. Sitting down on a
chair, squatting or crouching drop the body but keep the torso and head up; push-ups and
someone sitting or lying down on purpose are low without a fast drop from upright; a person
first seen on the floor has no upright reference. None of these starts a fall.

States (annotation `fall_state`) and the events that leave them:

    upright | down | recovered --score >= 0.5, track old enough--> falling   (fall_started)
    falling --down for confirm_s--> fallen                                    (fall_confirmed)
    falling --not down for recover_s--> upright                               (none: a stumble)
    fallen --on their feet (posture <= standing_max) for recover_s--> recovered (fall_recovered)

Someone who goes down for confirm_s and is on their feet again within `exercise_cycle_s`
(burpees, floor dance moves) is exercising: no fall starts for `exercise_memory_s` after.
Time spent leaning over two straight arms (a plank, a push-up, a burpee, all fours) is not
lying and does not count towards `confirm_s`.
Besides the states, a person seen upright (for `seen_upright_s` in a row, not in one frame)
who has been down for `down_alarm_s` raises
`person_down`, the long-lie alarm, however they got there, exercising or not. The descent is
also measured from the last upright frame up to `descent_max_s` ago (a slow, supported or
stepwise fall), and a body as far below its last upright height as one on the floor
(`floor_drop`) reads down whatever its posture cues say.

"down" has hysteresis: posture >= lying_threshold to enter, < lying_release to leave. A
posture that cannot be measured (too few cues: a lying body's joints are often missed, or
the body is cut by the frame edge) is the last one measured for up to `max_gap_s`; after
that the person stays down or not down as last seen, since only a measured posture can
show a recovery. Time is summed between observations at most `max_gap_s` apart, so missed
detections and timestamp gaps neither fake nor lose lying time; across a change of posture
half the gap counts for the new one (it came somewhere in between: at 3 fps a fall is then
confirmed a frame sooner, as soon as at 30 fps).

Zones (a graph source's `zones`, on every frame: `streampose.geometry.zones`): a person whose
body point is in a `rest` zone (a bed, a mat) starts no fall and raises no alarm, one in an
`ignore` zone is dropped, and events carry the zone a person is in.

Tracks break in falls: the box changes shape fast, and at a low frame rate the tracker may
lose the person and start a new id for the body on the floor. A new track whose box overlaps
the last box of a track of the same stream that was not seen for at most `handover_s`
continues that track's history and state (Plugin.continues: the plugin stage moves the state
to the new id; the old id has none left). A track that ends while
falling and down (slid out of view, hidden on the floor), or lost half way down a deep, fast
drop, is confirmed at its end when `confirm_when_lost` is set.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from pydantic import Field, model_validator

from streampose.frame import KEYPOINT_INDEX, Event, Frame
from streampose.geometry.zones import Zone
from streampose.plugins.base import Plugin, PluginParams, make_event
from streampose.plugins.zones import person_zone

HEAD = [KEYPOINT_INDEX[n] for n in ("nose", "left_eye", "right_eye", "left_ear", "right_ear")]
SHOULDERS = [KEYPOINT_INDEX["left_shoulder"], KEYPOINT_INDEX["right_shoulder"]]
HIPS = [KEYPOINT_INDEX["left_hip"], KEYPOINT_INDEX["right_hip"]]
LEGS = [KEYPOINT_INDEX[n] for n in ("left_knee", "right_knee", "left_ankle", "right_ankle")]
ANKLES = [KEYPOINT_INDEX["left_ankle"], KEYPOINT_INDEX["right_ankle"]]
# Shoulder, elbow and wrist of each arm.
ARMS = [[KEYPOINT_INDEX[f"{side}_{joint}"] for joint in ("shoulder", "elbow", "wrist")] for side in ("left", "right")]
# Every joint but the elbows and wrists: arms move freely (raised, waving, reaching out from
# the floor) and say nothing about posture.
BODY = HEAD + SHOULDERS + HIPS + LEGS

# Segments (joint a, joint b) and their length as a share of standing height, from Winter's
# segment proportions (Biomechanics and Motor Control of Human Movement): shoulder 0.818,
# elbow 0.630, wrist 0.485, hip 0.530, knee 0.285, ankle 0.039 of height above the floor.
SEGMENTS = np.array([[KEYPOINT_INDEX[f"{side}_{a}"], KEYPOINT_INDEX[f"{side}_{b}"]]
                     for a, b in (("shoulder", "hip"), ("hip", "knee"), ("knee", "ankle"),
                                  ("shoulder", "elbow"), ("elbow", "wrist"))
                     for side in ("left", "right")])
SEGMENT_SHARE = np.array([0.288, 0.288, 0.245, 0.245, 0.246, 0.246, 0.188, 0.188, 0.145, 0.145])
# A height estimate needs this many segments: the median of fewer is one bad joint from nonsense.
MIN_SEGMENTS = 3

# Each cue's ramp: (value read as upright -> 0, value read as lying -> 1), 0.5 halfway. Angles
# in degrees from vertical, heights and lengths in body heights. Standing: torso 0-15 deg and
# (COCO shoulders to hips, measured on the shared videos) 0.33 long, eyes 0.40 above the
# hips, hips 0.49 above the ankles, joints spanning 0.9 (eyes to ankles), box 1.0 high and
# 0.3-0.6 wide. Sitting on a chair: torso upright, eyes 0.40 above the hips, hips 0.2 above
# the ankles, joints spanning 0.65. Lying across the view: torso near 90 deg, head, hips and
# ankles level, joints spanning under 0.3, box over 1.5 times wider than high. Lying along
# the view (towards or away from the camera): the torso looks upright but short.
CUE_RAMPS = {
    "torso_angle": (30.0, 65.0),
    "torso_length": (0.20, 0.10),
    "head_above_hips": (0.30, 0.05),
    "hips_above_ground": (0.30, 0.05),
    "extent": (0.60, 0.30),
    "box_height": (0.70, 0.35),
    "aspect": (1.0, 1.8),
}
MIN_CUES = 2
# A torso tilted out of the image plane is foreshortened, one tilted in it is turned: either
# shows the tilt, so the two cues count as one, the larger.
TORSO_CUES = ("torso_angle", "torso_length")
# Per-track history is trimmed by time, and also capped in samples whatever the frame rate.
MAX_SAMPLES = 1024
# A drop since the last upright frame reads down (0.5) at floor_drop, from 0 at floor_drop -
# FLOOR_RAMP to 1 at floor_drop + FLOOR_RAMP, in body heights.
FLOOR_RAMP = 0.15
# The long-lie alarm's default delay, seconds (see down_alarm_s). A care home would wait
# minutes; 6 s is what the labelled clips can exercise: 6 of their 24 falls lie still for 6 s
# within the clip (10 s: 2), the deliberate lie-downs and planks labelled as other_down_events
# mostly end sooner (one side plank lies 6.8 s and raises it).
DOWN_ALARM_S = 6.0
# The up direction and the floor level learnt from 3D joints follow upright frames with this
# time constant; a frame whose body axis (ankles to shoulders) is further than
# UP_TOLERANCE_DEG from the learnt up (a fall beginning, a bad pose) is not used.
UP_TIME_CONSTANT_S = 1.0
UP_TOLERANCE_DEG = 15.0
CAMERA_UP = np.array([0.0, -1.0, 0.0])  # camera axes: x right, y down, z forward
# Durations are sums of frame gaps in floating point: 150 gaps of 0.04 s sum to
# 5.999999999999998, not 6.0 (fall_home_elderly_walker_slow_collapse_istock, down exactly
# down_alarm_s at its last frame, lost its long lie to that at bf16).
TIME_TOLERANCE_S = 1e-6


def ramp(value: float, zero_at: float, one_at: float) -> float:
    """0 at `zero_at`, 1 at `one_at`, linear between, clipped (NaN stays NaN)."""
    return float(min(max((value - zero_at) / (one_at - zero_at), 0.0), 1.0))


def reached(duration: float, limit: float) -> bool:
    """Whether a duration (seconds, a sum of frame gaps) has reached `limit`, up to rounding."""
    return duration >= limit - TIME_TOLERANCE_S


def median(values) -> float:
    """np.median of a few finite numbers, the same number (the middle one, or the mean of the
    middle two) without its overhead: 1.3 instead of 11 us for a person's 8 segments, 3.5
    instead of 13 us for 60 remembered heights; twice per person and frame."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return float(ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2)


def segment_height(joints: np.ndarray, seen: np.ndarray) -> float:
    """Standing height implied by the seen segments of (17, D) joints (median), or NaN."""
    both = seen[SEGMENTS[:, 0]] & seen[SEGMENTS[:, 1]]
    if both.sum() < MIN_SEGMENTS:
        return np.nan
    lengths = np.linalg.norm(joints[SEGMENTS[both, 0]] - joints[SEGMENTS[both, 1]], axis=1)
    return median(lengths / SEGMENT_SHARE[both])


def _centre(joints: np.ndarray, seen: np.ndarray, group: list[int]) -> np.ndarray:
    """Mean of the seen joints of `group`, NaN when none is seen."""
    chosen = joints[group][seen[group]]
    # sum / count is what ndarray.mean computes, without its overhead
    return chosen.sum(axis=0) / len(chosen) if len(chosen) else np.full(joints.shape[1], np.nan)


@dataclass
class Observation:
    """One person in one frame, in image pixels (y grows downwards); NaN where not measurable.

    size:      body height implied by the visible segments, pixels.
    head, shoulders, hips, ankles: (2,) centres of the seen joints of each group.
    top_y, bottom_y: rows of the highest and lowest seen joints of the BODY (arms left out).
    legs_seen: a knee or an ankle is seen.
    ankles_seen: an ankle is seen (floor_y is read from it).
    floor_y: the row of the lower seen ankle, where the person stands; without one the box's
             bottom (where a lying body touches the floor; at the bottom edge, a bound: the
             floor is there or lower). When the box touches the bottom edge the legs are taken
             as cut: knees and ankles are not used, whatever the keypoint model guessed.
    box_centre_y: pixels; NaN when the box touches the top or bottom edge.
    box_top_y: pixels; NaN when the box touches the top edge (a body cut at the bottom edge, or
            lying along it in low contrast with few joints found, still shows its top).
    box_height: pixels; NaN when the box touches any edge (only part of the body is in view).
    aspect: box width / height; NaN when the box touches the top or bottom edge. When it
            touches the left or right edge the body goes on outside, so this is a lower bound.
    side_cut: the box touches the left or right edge.
    arms:   per arm whose shoulder, elbow and wrist are seen: how far the wrist is below the
            shoulder (pixels) and the angle at the elbow (degrees, 180 = straight).
    """

    size: float
    head: np.ndarray
    shoulders: np.ndarray
    hips: np.ndarray
    ankles: np.ndarray
    top_y: float
    bottom_y: float
    legs_seen: bool
    floor_y: float
    ankles_seen: bool
    box_centre_y: float
    box_top_y: float
    box_height: float
    aspect: float
    side_cut: bool
    arms: list[tuple[float, float]]


def _elbow_angle(shoulder: np.ndarray, elbow: np.ndarray, wrist: np.ndarray) -> float:
    """Angle at the elbow between the upper arm and the forearm, degrees (180 = straight)."""
    upper, fore = shoulder - elbow, wrist - elbow
    norms = float(np.linalg.norm(upper) * np.linalg.norm(fore))
    return float(np.degrees(np.arccos(np.clip(upper @ fore / norms, -1.0, 1.0)))) if norms > 0 else np.nan


def observe(keypoints: np.ndarray, box: np.ndarray, picture: tuple[int, int, int, int],
            min_confidence: float, edge_margin: float) -> Observation:
    """Measure one person. keypoints: (17, 3) x, y pixels and confidence; box: (4,) x1 y1 x2 y2;
    picture: (x1, y1, x2, y2) of the image that shows the scene (Frame.picture_box): its edges
    are where a body is cut, the black bars of letterboxed video left out."""
    left, top, right, bottom = picture
    width, height = right - left, bottom - top
    xy = keypoints[:, :2].astype(np.float64)
    seen = ((keypoints[:, 2] >= min_confidence) & (xy[:, 0] >= left) & (xy[:, 0] < right)
            & (xy[:, 1] >= top) & (xy[:, 1] < bottom))
    x1, y1, x2, y2 = (float(v) for v in box)
    bottom_cut = y2 >= bottom - edge_margin * height
    top_cut = y1 <= top + edge_margin * height
    rows_ok = not top_cut and not bottom_cut and y2 > y1
    side_cut = x1 <= left + edge_margin * width or x2 >= right - edge_margin * width
    if bottom_cut:
        seen[LEGS] = False
    rows = xy[BODY, 1][seen[BODY]]
    return Observation(
        size=segment_height(xy, seen),
        head=_centre(xy, seen, HEAD), shoulders=_centre(xy, seen, SHOULDERS),
        hips=_centre(xy, seen, HIPS), ankles=_centre(xy, seen, ANKLES),
        top_y=rows.min() if len(rows) else np.nan, bottom_y=rows.max() if len(rows) else np.nan,
        legs_seen=bool(seen[LEGS].any()),
        floor_y=xy[ANKLES, 1][seen[ANKLES]].max() if seen[ANKLES].any() else y2,
        ankles_seen=bool(seen[ANKLES].any()),
        box_centre_y=(y1 + y2) / 2 if rows_ok else np.nan,
        box_top_y=np.nan if top_cut else y1,
        box_height=y2 - y1 if rows_ok and not side_cut else np.nan,
        aspect=(x2 - x1) / (y2 - y1) if rows_ok else np.nan, side_cut=side_cut,
        arms=[(float(xy[w, 1] - xy[s, 1]), _elbow_angle(xy[s], xy[e], xy[w]))
              for s, e, w in ARMS if seen[[s, e, w]].all()])


@dataclass
class Body3D:
    """One person's 3D joints (metres, camera frame): group centres (3,), NaN where not seen,
    and the height implied by the segments (metres)."""

    head: np.ndarray
    shoulders: np.ndarray
    hips: np.ndarray
    ankles: np.ndarray
    stature: float


def observe_3d(joints: np.ndarray, min_confidence: float) -> Body3D | None:
    """Measure (17, 4) joints (x, y, z metres, confidence); None without a seen torso."""
    xyz = joints[:, :3].astype(np.float64)
    seen = (joints[:, 3] >= min_confidence) & np.isfinite(xyz).all(axis=1)
    body = Body3D(_centre(xyz, seen, HEAD), _centre(xyz, seen, SHOULDERS), _centre(xyz, seen, HIPS),
                  _centre(xyz, seen, ANKLES), segment_height(xyz, seen))
    torso_seen = np.isfinite(body.shoulders).all() and np.isfinite(body.hips).all()
    return body if torso_seen and body.stature > 0 else None


def posture_score(values: dict[str, float], side_cut: bool) -> float:
    """0 (upright) .. 1 (lying): the mean of the measurable cues (values in CUE_RAMPS units,
    NaN where not measurable), or NaN with fewer than MIN_CUES of them."""
    cues = {name: ramp(value, *CUE_RAMPS[name]) for name, value in values.items() if math.isfinite(value)}
    torso = [cues.pop(name) for name in TORSO_CUES if name in cues]
    if torso:
        cues["torso"] = max(torso)
    if side_cut and cues.get("aspect", 1.0) < 0.5:
        del cues["aspect"]   # a lower bound of the aspect only tells when it already reads lying
    return float(np.mean(list(cues.values()))) if len(cues) >= MIN_CUES else np.nan


@dataclass
class Sample:
    """What the descent window keeps of one frame: time, whether upright, the body's centres as image
    rows (shoulders, hips, box centre, box top; pixels) with the floor row under the person, with 3D joints
    the centres as points (metres), the track's body height then (pixels), and the descent evidence
    measured at that frame."""

    time: float
    upright: bool          # measured upright, before any fall
    rows: np.ndarray       # (4,)
    floor: float
    floor_seen: bool       # the floor row is an ankle's (else the box's bottom)
    points: np.ndarray     # (2, 3) shoulders, hips; NaN without 3D
    height: float          # the track's body height then, pixels
    descent: float = 0.0


@dataclass
class FallTrack:
    """One track's state. Times are media time, seconds."""

    stream: str = ""
    state: str = "upright"
    first_seen: float | None = None
    last_seen: float | None = None
    last_capture: float = 0.0      # capture time of the last sighting, seconds since the epoch
    last_box: np.ndarray | None = None
    sizes: deque = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))    # (time, pixels, whole and upright)
    height: float = np.nan         # body height, pixels: the last one known
    reference: Sample | None = None  # the last upright frame
    window: deque = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))   # Samples
    up: np.ndarray = field(default_factory=lambda: CAMERA_UP.copy())  # 3D: unit up vector
    ground: float = np.nan         # 3D: height of the floor along `up`, metres
    up_time: float | None = None   # 3D: when `up` and `ground` were last learnt
    posture: float = np.nan        # latest measured
    posture_time: float = -np.inf  # when it was measured
    down: bool = False
    down_s: float = 0.0            # time down since the fall started, not held up on the arms
    up_s: float = 0.0              # time not down, in a row
    standing_s: float = 0.0        # time on their feet (posture at most standing_max), in a row
    lying_s: float = 0.0           # time down, in a row (ended by recover_s not down), for the long-lie alarm
    long_lie_raised: bool = False  # person_down raised for the current time down
    went_down: float | None = None # when the person last went down, until on their feet again
    exercising_until: float = -np.inf  # no fall starts before this: down and up again quickly (exercise_cycle_s)
    fall_descent: float = 0.0      # descent evidence when the current fall started
    upright_since: float | None = None  # start of the current run of upright frames
    seen_upright: bool = False     # read upright for seen_upright_s in a row (the long lie needs it)
    features: dict = field(default_factory=dict)   # the latest frame's, for events
    zone: Zone | None = None       # the stream's zone the body point is in (streampose.geometry.zones)

    @property
    def resting(self) -> bool:
        """In a rest zone (a bed, a sofa, a mat): lying there is no fall."""
        return self.zone is not None and self.zone.kind == "rest"


class FallDetector(Plugin):
    """Annotates every tracked person with `fall_score` (0..1) and `fall_state`, and raises
    `fall_started`, `fall_confirmed` (the alarm) and `fall_recovered` events whose data holds
    the features of the frame that raised them."""

    class Params(PluginParams):
        min_confidence: float = Field(0.3, ge=0, le=1, description="Keypoints (and 3D joints) less confident "
                                      "than this, or outside the frame, are ignored, 0..1.")
        fall_window_s: float = Field(1.2, gt=0, le=10, description="A fall is a drop from an upright posture "
                                     "within this long, seconds of media time (a window sliding with every frame).")
        min_drop: float = Field(0.25, gt=0, le=2, description="Drop of the body's centres (mean of shoulders, hips "
                                "and box centre) within fall_window_s at which the descent evidence is 0.5, in "
                                "body heights; it is 0 at half and 1 at one and a half times this. Sitting down "
                                "or squatting drops them 0.2-0.35, a fall 0.4-0.6.")
        min_speed: float = Field(0.5, gt=0, le=20, description="Mean speed of that drop at which the descent "
                                 "evidence is 0.5, body heights per second; 0 at half and 1 at one and a half "
                                 "times this. Falls reach the floor in 0.4-1 s (0.5-1.5 body heights per "
                                 "second); sitting or lying down on purpose takes 1.5 s or more.")
        descent_max_s: float = Field(3.0, gt=0, le=30, description="The drop from the last upright frame counts "
                                     "as a descent up to this long after it, seconds of media time (its speed is "
                                     "the mean over that time): a slow, supported or stepwise fall.")
        floor_drop: float = Field(0.55, gt=0, le=2, description="Drop of the body's centres and box top since the "
                                  "last upright frame at which a person reads down whatever the posture cues say "
                                  "(lying at the frame edge, along the view, few joints found), body heights. "
                                  "Sitting on a chair or squatting drops them 0.2-0.35. Chosen with confirm_s by "
                                  "cross-validation over the labelled clips at their own rates and at 10, 5 and "
                                  "3 fps (docs/falls.md): 0.45 raised one more false alarm over the four rates.")
        upright_max: float = Field(0.15, ge=0, le=1, description="Posture score (0 upright .. 1 lying) up to which "
                                   "a frame is an upright reference for the drop.")
        lying_threshold: float = Field(0.5, gt=0, le=1, description="Posture score at which a person counts as "
                                       "down (lying, on the floor), 0..1.")
        lying_release: float = Field(0.35, ge=0, le=1, description="Posture score below which a person who was "
                                     "down no longer counts as down (hysteresis), 0..1; below lying_threshold.")
        confirm_s: float = Field(0.6, ge=0, le=60, description="Time down after a fall starts before it is "
                                 "confirmed (fall_confirmed), seconds of media time. Chosen with floor_drop by "
                                 "cross-validation over the labelled clips at their own rates and at 10, 5 and 3 "
                                 "fps (docs/falls.md): 0.6 confirms falls 0.1-0.2 s sooner than 0.8, and more of "
                                 "them at 10 and 5 fps; a chest-to-floor burpee lies 1.2 s either way.")
        recover_s: float = Field(1.0, gt=0, le=60, description="Time in a row that ends a fall, seconds: not down "
                                 "for an unconfirmed one (dropped, a stumble), on their feet (posture at most "
                                 "standing_max) for a confirmed one (fall_recovered); and not down, the long lie.")
        standing_max: float = Field(0.25, ge=0, le=1, description="Posture score up to which a person who fell is "
                                    "on their feet again, 0..1. Sitting on the floor reads 0.3-0.45 (hips on the "
                                    "ground, torso up), standing 0-0.15.")
        down_alarm_s: float = Field(DOWN_ALARM_S, ge=0, le=3600, description="A person seen upright (seen_upright_s) "
                                    "who has been down this long (not down for less than recover_s in between) raises "
                                    "person_down, the long-lie alarm, whether or not the way down looked like a "
                                    "fall, seconds of media time; 0 = never.")
        seen_upright_s: float = Field(0.2, ge=0, le=10, description="A person counts as seen upright, which the "
                                      "long-lie alarm (person_down) needs, once they have read upright (posture at most "
                                      "upright_max) this long in a row, seconds of media time: one frame whose few "
                                      "measurable cues read upright (the box of someone crouching whose joints were "
                                      "missed) is no evidence of standing.")
        exercise_cycle_s: float = Field(3.0, ge=0, le=60, description="A person who goes down and is on their "
                                        "feet again (posture at most standing_max) within this long, seconds, is "
                                        "exercising (burpees, floor dance moves): no fall starts for exercise_memory_s "
                                        "after; the long-lie alarm still holds. 0 = never.")
        exercise_memory_s: float = Field(10.0, ge=0, le=600, description="How long after a quick down-and-up "
                                         "(exercise_cycle_s) no fall starts, seconds of media time.")
        use_3d: bool = Field(False, description="Measure the torso angle and the heights from 3D joints when a "
                             "lift3d stage ran before this one. Off by default: on monocular video the 2D cues "
                             "proved more reliable (on fall_room_chair the 3D cues scored the fall 0.496, under "
                             "the 0.5 threshold); turn it on with calibrated cameras.")
        min_track_age_s: float = Field(0.25, ge=0, le=60, description="A track must have been seen this long "
                                       "before a fall can start, seconds (a new track is often a false detection).")
        height_memory_s: float = Field(3.0, gt=0, le=60, description="Body height is the median of the per-frame "
                                       "estimates of the last this many seconds the person was not down, only those "
                                       "taken upright and whole in the picture (box touching no edge) if there are "
                                       "any; with none in this time the last height holds. After a confirmed fall, "
                                       "until recovered, the height the person stood at.")
        max_gap_s: float = Field(0.7, gt=0, le=10, description="Time between two observations of a track counts "
                                 "(as down or not down) only when they are at most this far apart, seconds.")
        handover_s: float = Field(1.5, ge=0, le=10, description="A new track overlapping the last box of a track "
                                  "unseen for at most this long continues that track's history, seconds; 0 = never. "
                                  "Cover the tracker's confirmation delay (min_hits frames) at the lowest frame rate.")
        edge_margin: float = Field(0.01, ge=0, le=0.2, description="A box closer than this fraction of the frame "
                                   "size to an edge is cut by it (the body goes on outside): its height is not "
                                   "used; at the top or bottom edge neither its centre nor its aspect ratio, and at "
                                   "the bottom edge neither the knees nor the ankles.")
        confirm_when_lost: bool = Field(True, description="A track that ends while falling and down (slid out of "
                                        "view, hidden on the floor), or half way down a deep, fast drop (under way at its "
                                        "last sighting, posture past lying_release: a lying body the detector misses), "
                                        "raises fall_confirmed at its end.")

        held_up_wrist_drop: float = Field(0.2, ge=0, le=1, description="A person leaning over two straight arms "
                                          "(both wrists at least this far below their shoulders, body heights; elbows "
                                          "held_up_elbow_deg or straighter; torso held_up_torso_deg or more from "
                                          "vertical) holds the chest up, a plank, a push-up, a burpee, all fours: not "
                                          "lying, so that time does not count towards confirm_s (the long lie still "
                                          "counts it); 0 = off. A whole arm is 0.33 long: 0.2 is an arm within about 50 "
                                          "degrees of vertical. On the labelled clips it removes the first burpee's "
                                          "fall_confirmed at fp32 and bf16 and delays two alarms by 0.04-0.06 s; "
                                          "0.15-0.25, elbows 130-155 and torso 30-60 degrees give the same results.")
        held_up_elbow_deg: float = Field(140.0, ge=90, le=180, description="The angle at the elbow, degrees (180 = "
                                         "straight), from which an arm counts as straight for held_up_wrist_drop.")
        held_up_torso_deg: float = Field(45.0, ge=0, le=90, description="The torso's tilt from vertical, degrees, from "
                                         "which straight arms under the shoulders hold the chest up (held_up_wrist_drop); "
                                         "below it they prop up someone sitting on the floor, who is down.")

        @model_validator(mode="after")
        def _hysteresis(self):
            if self.lying_release >= self.lying_threshold:
                raise ValueError(f"lying_release ({self.lying_release}) must be below lying_threshold "
                                 f"({self.lying_threshold})")
            return self

    params: Params

    def new_track(self) -> FallTrack:
        return FallTrack()

    def on_person(self, frame: Frame, i: int, state: FallTrack) -> list[Event]:
        persons = frame.persons
        if persons.keypoints is None:
            raise ValueError("fall needs keypoints: put a keypoints stage before this plugin")
        p, now, box = self.params, frame.media_time, persons.boxes[i].astype(np.float64)
        zone = person_zone(frame, i, p.min_confidence)
        if zone is not None and zone.kind == "ignore":
            return []   # nobody to watch there (a television, a poster)

        obs = observe(persons.keypoints[i], box, frame.picture_box, p.min_confidence, p.edge_margin)
        body3d = (observe_3d(persons.kpts3d[i], p.min_confidence)
                  if p.use_3d and persons.kpts3d is not None else None)
        body_height = self._body_height(state, now, obs)
        values = self._cue_values(obs, body_height, body3d, state)
        measured = posture_score(values, obs.side_cut)
        # Not while a fall is under way or the person is down: the two cues left of a person
        # lying at the bottom edge towards the camera (torso and head, foreshortened) can read
        # upright (0.04 on fall_cctv_restaurant_kitchen_slip_with_pot), and the drop must be
        # measured from before the fall.
        upright = measured <= p.upright_max and not state.down and state.state not in ("falling", "fallen")
        sample = Sample(now, upright, np.array([obs.shoulders[1], obs.hips[1], obs.box_centre_y, obs.box_top_y]),
                        obs.floor_y, obs.ankles_seen,
                        np.full((2, 3), np.nan) if body3d is None else np.stack([body3d.shoulders, body3d.hips]),
                        body_height)
        sample.descent, drop, speed, floor_drop = self._descent(state, sample, body_height, body3d)
        # The end of a deep, fast drop is no upright reference, whatever its few cues say (sitting
        # hard on the floor after a backward fall, legs cut by the frame edge, reads upright):
        # the drop is measured from before it.
        upright = sample.upright = upright and sample.descent < 0.5
        # Seen upright takes upright readings in a row, not one: a man crouching on a mat whose
        # joints were missed for a frame read upright by his box alone (box height 0.71 body
        # heights against the ramp's 0.70) and, lying in a plank 6 s later, raised person_down
        # (adl_forearm_plank_home_dim at bf16; at fp32 the frame kept a lying cue).
        state.upright_since = (now if state.upright_since is None else state.upright_since) if upright else None
        state.seen_upright = state.seen_upright or (upright and reached(now - state.upright_since, p.seen_upright_s))
        # The drop and the lying posture need not peak in the same frame (the body lands, then
        # settles; a blurred landing is not measured): the drop counts for the whole window.
        descent = max([sample.descent] + [s.descent for s in state.window])
        if body3d is not None and upright:
            self._learn_ground(state, body3d, now)
        # A body as far below its last upright height as a body on the floor is down, however
        # few cues its joints give (lying at the frame edge, in low contrast, along the view).
        # Not at the top or bottom edge: a body walking out of view at the bottom edge drops
        # like one falling there (crowd_walking_overhead).
        measurable = np.isfinite(floor_drop) and np.isfinite(obs.box_centre_y)
        low = ramp(floor_drop, p.floor_drop - FLOOR_RAMP, p.floor_drop + FLOOR_RAMP) if measurable else np.nan
        posture = self._posture(state, measured, now)
        # It only adds evidence of being down: with no posture measured, a small drop says
        # nothing (only a measured posture can show a recovery; fall_room_chair, lying at the
        # right edge with one cue left, read 0.19 and lost its fall).
        posture = max(posture, low) if np.isfinite(posture) else (low if low >= p.lying_threshold else np.nan)
        if upright:
            state.reference = sample

        gap = None if state.last_seen is None else now - state.last_seen
        state.first_seen = now if state.first_seen is None else state.first_seen
        state.stream, state.last_seen, state.last_capture, state.last_box = frame.stream, now, frame.capture_time, box
        state.zone = zone
        state.window.append(sample)
        state.features = {"posture": posture, "descent": descent, "drop": drop, "speed": speed, "floor_drop": floor_drop,
                          "body_height_px": body_height,
                          "cues": {name: value for name, value in values.items() if np.isfinite(value)}}

        # The chest held up on both straight arms, the torso leaning over them (a plank, a push-up,
        # a burpee, all fours): not lying on the floor. Sitting on the floor propped on the hands
        # (torso up) is down.
        held_up = (p.held_up_wrist_drop > 0 and len(obs.arms) == 2
                   and values["torso_angle"] >= p.held_up_torso_deg
                   and all(down >= p.held_up_wrist_drop * body_height and angle >= p.held_up_elbow_deg
                           for down, angle in obs.arms))
        events = self._step(frame, i, state, posture, descent, gap, held_up)
        evidence = state.fall_descent if state.state in ("falling", "fallen") else descent
        persons.annotations[i]["fall_score"] = round(min(evidence, posture), 3) if np.isfinite(posture) else 0.0
        persons.annotations[i]["fall_state"] = state.state
        if zone is not None:
            persons.annotations[i]["zone"] = zone.name
        return events

    # ------------------------------------------------------------------ measuring

    def _body_height(self, state: FallTrack, now: float, obs: Observation) -> float:
        """The track's body height in pixels: the median of the estimates of the last
        height_memory_s, counting only those taken while the person was upright and whole in
        the picture (box touching no frame edge) when there are any. Estimates taken while down
        (lying joints are often wrong and foreshortened) are not used, and with no estimate in
        the memory the last height holds: a body cut by the frame edge, or lying, keeps the
        size it was seen at. After a confirmed fall, until recovered, it is the height at the
        upright reference."""
        p = self.params
        # After a confirmed fall, until the person is on their feet again, the height is the one
        # they stood at: segments measured on the floor, legs lifted or folded towards the camera,
        # read a body far taller than it is (fall_outdoor_rollerblader_slides_down_pole: 107 px
        # standing, estimates growing to 273 px while he sits on the asphalt), and with it a
        # sitting body read upright in body heights and "on their feet" while he never got up.
        # A person who does get up is measured with the segments they stood with.
        if state.state == "fallen" and state.reference is not None and np.isfinite(state.reference.height):
            return state.reference.height
        if np.isfinite(obs.size) and obs.size > 0 and not state.down:
            whole = np.isfinite(obs.box_height) and bool(state.window) and state.window[-1].upright
            state.sizes.append((now, obs.size, whole))
        while state.sizes and state.sizes[0][0] < now - p.height_memory_s:
            state.sizes.popleft()
        if state.sizes:
            good = [size for _, size, whole in state.sizes if whole]
            state.height = median(good or [size for _, size, _ in state.sizes])
        return state.height

    @staticmethod
    def _cue_values(obs: Observation, body_height: float, body3d: Body3D | None,
                    state: FallTrack) -> dict[str, float]:
        """Each cue's value in its own unit (see CUE_RAMPS); NaN where not measurable."""
        torso_length = np.nan   # 3D angles need no foreshortening cue
        if body3d is not None:
            torso = body3d.shoulders - body3d.hips
            torso_angle = np.degrees(np.arccos(np.clip(torso @ state.up / np.linalg.norm(torso), -1, 1)))
            ground = state.ground if np.isfinite(state.ground) else body3d.ankles @ state.up
            head_above_hips = (body3d.head - body3d.hips) @ state.up / body3d.stature
            hips_above_ground = (body3d.hips @ state.up - ground) / body3d.stature
        else:
            torso = obs.shoulders - obs.hips
            torso_angle = np.degrees(np.arctan2(abs(torso[0]), -torso[1]))
            torso_length = np.linalg.norm(torso) / body_height
            head_above_hips = (obs.hips[1] - obs.head[1]) / body_height
            hips_above_ground = (obs.ankles[1] - obs.hips[1]) / body_height
        both_ends_seen = obs.legs_seen and np.isfinite(obs.head[1])
        return {
            "torso_angle": float(torso_angle),
            "torso_length": float(torso_length),
            "head_above_hips": float(head_above_hips),
            "hips_above_ground": float(hips_above_ground),
            "extent": (obs.bottom_y - obs.top_y) / body_height if both_ends_seen else np.nan,
            "box_height": obs.box_height / body_height,
            "aspect": obs.aspect,
        }

    @staticmethod
    def _learn_ground(state: FallTrack, body3d: Body3D, now: float) -> None:
        """Follow the person's up direction (ankles to shoulders; the camera's up until first
        seen) and the floor under the ankles while upright."""
        axis = body3d.shoulders - body3d.ankles
        if not np.isfinite(axis).all():
            return
        axis /= np.linalg.norm(axis)
        if state.up_time is None:
            weight = 1.0
        elif np.degrees(np.arccos(np.clip(axis @ state.up, -1, 1))) > UP_TOLERANCE_DEG:
            return
        else:
            weight = 1 - np.exp(-max(now - state.up_time, 0.0) / UP_TIME_CONSTANT_S)
        up = (1 - weight) * state.up + weight * axis
        state.up = up / np.linalg.norm(up)
        ground = body3d.ankles @ state.up
        state.ground = ground if state.up_time is None else (1 - weight) * state.ground + weight * ground
        state.up_time = now

    def _descent(self, state: FallTrack, sample: Sample, body_height: float,
                 body3d: Body3D | None) -> tuple[float, float, float, float]:
        """(descent evidence 0..1, its drop in body heights and mean speed in body heights per
        second, the drop since the last upright frame) from the upright frame that gives the
        most evidence: those in the window, and the last upright frame up to descent_max_s ago,
        so that the whole descent counts however long it took from the last upright
        observation to the first lying one (a slow or supported collapse, a camera that sends
        a new image only every 0.3 s); (0, NaN, NaN, NaN) without one. The evidence from one
        upright frame is that of a drop both deep
        (min_drop) and fast (min_speed): a deliberate sit-down to the floor can drop as deep
        as a fall, but not as fast. A drop is the mean over the body's centres seen in both
        frames: in 3D along the up direction when both frames have 3D joints, else in the image
        as heights above the floor row when both frames show it (so that walking towards a high
        camera, which moves the whole body down the image, or the camera tilting, drops
        nothing), else as image rows."""
        p = self.params
        while state.window and state.window[0].time < sample.time - p.fall_window_s:
            state.window.popleft()
        upright = [s for s in state.window if s.upright]
        last = state.reference
        if last is not None and (not upright or upright[-1] is not last):
            upright.append(last)
        if not upright:
            return 0.0, np.nan, np.nan, np.nan
        then_rows, then_floor = np.array([s.rows for s in upright]), np.array([s.floor for s in upright])
        shift = np.where(np.isfinite(then_floor) & np.isfinite(sample.floor), sample.floor - then_floor, 0.0)
        # A floor row read from the box's bottom also rises when the legs are lifted or hidden
        # (a breakdance freeze, legs behind furniture), not only when the person walks away:
        # only ankles seen in both frames show the floor moving up the image (in
        # adl_breakdance_floor_moves_gym_crowd the box's bottom rising 0.25-1.1 body heights
        # read as that much drop, and two freezes as falls).
        ankles_both = np.array([s.floor_seen for s in upright]) & sample.floor_seen
        shift = np.where((shift < 0) & ~ankles_both, 0.0, shift)
        drops = (sample.rows - then_rows - shift[:, None]) / body_height             # (M, 4)
        if body3d is not None:
            heights = np.array([s.points for s in upright]) @ state.up                 # (M, 2)
            drops_3d = (heights - sample.points @ state.up) / body3d.stature
            has_3d = np.isfinite(drops_3d).any(axis=1)
            drops[has_3d] = np.column_stack([drops_3d[has_3d], np.full((has_3d.sum(), 2), np.nan)])
        seen = np.isfinite(drops)
        counts = seen.sum(axis=1)
        if not counts.any():
            return 0.0, np.nan, np.nan, np.nan
        mean_drops = np.where(counts > 0, np.where(seen, drops, 0.0).sum(axis=1) / np.maximum(counts, 1), -np.inf)
        ages = sample.time - np.array([s.time for s in upright])
        speeds = mean_drops / np.maximum(ages, 1e-6)
        evidence = np.minimum(np.clip((mean_drops / p.min_drop - 0.5), 0, 1),
                              np.clip((speeds / p.min_speed - 0.5), 0, 1))
        evidence[ages > max(p.descent_max_s, p.fall_window_s)] = 0.0
        best = int(np.argmax(evidence))
        floor_drop = float(mean_drops[-1]) if upright[-1] is last and counts[-1] else np.nan
        return float(evidence[best]), float(mean_drops[best]), float(speeds[best]), floor_drop

    # ------------------------------------------------------------------ deciding

    def _posture(self, state: FallTrack, measured: float, now: float) -> float:
        """The posture to act on: the measured one, else the last one measured if recent (a
        blurred frame, a lost joint), else NaN."""
        if np.isfinite(measured):
            state.posture, state.posture_time = measured, now
            return measured
        return state.posture if now - state.posture_time <= self.params.max_gap_s else np.nan

    def _step(self, frame: Frame, i: int, state: FallTrack, posture: float, descent: float,
              gap: float | None, held_up: bool) -> list[Event]:
        """Advance the state machine by one observation (`held_up`: on both straight arms); the
        events it raises."""
        p, now = self.params, frame.media_time
        known = np.isfinite(posture)
        was_down = state.down
        if known:
            state.down = posture >= (p.lying_release if state.down else p.lying_threshold)
        # Time counts between two observations close enough together: all of it in the same
        # posture, half of it across a change (which came somewhere in between).
        span = 0.0 if gap is None or gap > p.max_gap_s else gap if state.down == was_down else gap / 2
        if state.down:
            # Held up on both straight arms is not lying on the floor: that time does not confirm a
            # fall (reps_burpees_side_studio: the first burpee's plank, held 0.6-0.8 s, was confirmed).
            # It still counts as down for the long lie (someone on all fours who cannot get up).
            state.down_s += 0.0 if held_up else span
            state.up_s, state.lying_s = 0.0, state.lying_s + span
        else:
            state.up_s += span
            if reached(state.up_s, p.recover_s):
                state.lying_s, state.long_lie_raised = 0.0, False
        standing = known and posture <= p.standing_max
        state.standing_s = state.standing_s + span if standing else 0.0
        if state.down and not was_down:
            state.went_down = now
        elif standing and state.went_down is not None:
            # Down for at least confirm_s (as long as a confirmed fall) and on their feet again
            # within exercise_cycle_s: a burpee, a floor dance move, a squat thrust. Someone who
            # falls is rarely up again that soon; a posture flickering across lying_threshold
            # for a frame or two is no cycle.
            if reached(state.lying_s, p.confirm_s) and now - state.went_down <= p.exercise_cycle_s:
                state.exercising_until = now + p.exercise_memory_s
            state.went_down = None
        events = []
        if (state.down and state.seen_upright and not state.long_lie_raised and p.down_alarm_s > 0
                and reached(state.lying_s, p.down_alarm_s) and not state.resting):
            state.long_lie_raised = True
            events.append(self._event(frame, i, "person_down", state.posture, state, lying_s=round(state.lying_s, 3)))
        return events + self._transition(frame, i, state, posture, descent,
                                         span if state.down and not was_down and not held_up else 0.0)

    def _transition(self, frame: Frame, i: int, state: FallTrack, posture: float, descent: float,
                    down_now_s: float) -> list[Event]:
        """The fall state machine's move at this observation, and its event (`down_now_s`: the
        time down counted at this observation if the person went down at it)."""
        p, now, known = self.params, frame.media_time, np.isfinite(posture)
        if state.state in ("upright", "down", "recovered"):
            score = min(descent, posture) if known else 0.0
            if score >= 0.5 and self._may_fall(state, now):
                state.state, state.down, state.down_s, state.up_s = "falling", True, down_now_s, 0.0
                state.fall_descent = descent
                return [self._event(frame, i, "fall_started", score, state)]
            if state.state != "recovered" or state.down:
                state.state = "down" if state.down else "upright"
        elif state.state == "falling":
            if reached(state.down_s, p.confirm_s) and state.resting:
                state.state = "down"   # landed in a rest zone: on a bed or a mat, lying is no fall
            elif reached(state.down_s, p.confirm_s):
                state.state = "fallen"
                return [self._event(frame, i, "fall_confirmed", state.posture, state)]
            if reached(state.up_s, p.recover_s):
                state.state = "upright"
        elif state.state == "fallen" and reached(state.standing_s, p.recover_s):
            state.state = "recovered"
            return [self._event(frame, i, "fall_recovered", 1.0 - state.posture, state)]
        return []

    def _may_fall(self, state: FallTrack, now: float) -> bool:
        """Whether a fall of this track may start (or, lost half way down, be confirmed) at
        media time `now`: the track is old enough to be no false detection, the person is not
        in a rest zone, and not exercising."""
        return (now - state.first_seen >= self.params.min_track_age_s and not state.resting
                and now > state.exercising_until)

    def _event(self, frame: Frame, i: int, kind: str, score: float, state: FallTrack, **data) -> Event:
        zone = {} if state.zone is None else {"zone": state.zone.name, "zone_kind": state.zone.kind}
        return make_event(frame, i, kind, score, down_s=round(state.down_s, 3), **zone, **data,
                          **_rounded(state.features))

    # ------------------------------------------------------------------ track life

    def continues(self, frame: Frame, i: int, lost: dict[int, FallTrack]) -> int | None:
        """The lost track (unseen for at most handover_s) whose last box overlaps this person's
        most, if any: a track break (occlusion, a fall the tracker lost) keeps its history."""
        box = frame.persons.boxes[i].astype(np.float64)
        best, best_overlap = None, 0.0
        for track_id, old in lost.items():
            if old.last_box is None or frame.media_time - old.last_seen > self.params.handover_s:
                continue
            overlap = _overlap(old.last_box, box)
            if overlap > best_overlap:
                best, best_overlap = track_id, overlap
        return best

    def end_track(self, frame: Frame | None, track_id: int, state: FallTrack) -> list[Event]:
        p = self.params
        falling = state.state == "falling" and state.down
        # Lost in the middle of a deep, fast drop, half way down (posture past lying_release): a
        # lying body is what a pedestrian detector misses most, and furniture or a falling
        # object hides it (fall_cctv_street_hit_by_falling_branch: lost at posture 0.41, its
        # last sighting's descent evidence 1.0). The drop must be under way at the last sighting
        # (that frame's own evidence), not only somewhere in the last fall_window_s: a breakdancer
        # who dropped fast and read 0.14 a frame later was lost 0.7 s after the drop at posture
        # 0.39 (two box cues), her last frame's own evidence 0, and raised fall_confirmed
        # (adl_breakdance_floor_moves_gym_crowd at bf16).
        dropping = bool(state.window) and state.window[-1].descent >= 0.5
        going_down = (state.state in ("upright", "down", "recovered") and dropping
                      and state.posture >= p.lying_release and self._may_fall(state, state.last_seen))
        if state.resting or not (p.confirm_when_lost and (falling or going_down)):
            return []
        data = {"lost_while_down": True, "last_seen": round(state.last_seen, 3),
                "down_s": round(state.down_s, 3), **_rounded(state.features)}
        # At a stream gap (no frame) the event is stamped with the last sighting and only logged.
        media_time, capture_time = ((frame.media_time, frame.capture_time) if frame is not None
                                    else (state.last_seen, state.last_capture))
        return [Event(kind="fall_confirmed", stream=state.stream, track_id=track_id, media_time=media_time,
                      capture_time=capture_time, score=state.posture, data=data)]


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection of two x1 y1 x2 y2 boxes over the smaller one's area, 0..1."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(width * height / smaller) if smaller > 0 else 0.0


def _rounded(features: dict) -> dict:
    """JSON-ready copy: floats to 3 decimals, NaN to None."""
    def one(value):
        if isinstance(value, dict):
            return _rounded(value)
        return round(float(value), 3) if np.isfinite(value) else None
    return {key: one(value) for key, value in features.items()}
