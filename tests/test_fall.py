"""The fall detector: its state machine on synthetic keypoint sequences, and the evaluation
on the labelled videos (streampose evaluate falls) through the full graph and its pose cache."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import MEDIA, MODELS, REPO, VIDEOS
from streampose import messages
from streampose.evaluate.falls import ClipRun, cross_validate, judge
from streampose.frame import Event, Frame, Persons, StreamEvent
from streampose.graph import schema
from streampose.plugins.fall import FallDetector
from streampose.plugins.stage import PluginStage
from streampose.runtime.stage import StageContext

# ----------------------------------------------------------------- synthetic people

CONFIRM_S = FallDetector.Params().confirm_s   # what the timing tests hold the default to

# A person standing, facing the camera: per COCO joint, (sideways offset, height above the
# floor) in body heights (Winter's proportions).
STANDING = np.array([
    (0.0, 0.93), (-0.02, 0.945), (0.02, 0.945), (-0.05, 0.93), (0.05, 0.93),
    (-0.13, 0.82), (0.13, 0.82), (-0.16, 0.63), (0.16, 0.63), (-0.17, 0.485), (0.17, 0.485),
    (-0.09, 0.53), (0.09, 0.53), (-0.09, 0.285), (0.09, 0.285), (-0.09, 0.04), (0.09, 0.04),
])
# Seated on a chair (seat at a quarter of the height), torso upright, hands on the lap.
SITTING = np.array([
    (0.0, 0.67), (-0.02, 0.685), (0.02, 0.685), (-0.05, 0.67), (0.05, 0.67),
    (-0.13, 0.56), (0.13, 0.56), (-0.16, 0.40), (0.16, 0.40), (-0.10, 0.30), (0.10, 0.30),
    (-0.09, 0.27), (0.09, 0.27), (-0.10, 0.26), (0.10, 0.26), (-0.09, 0.04), (0.09, 0.04),
])
# Sitting on the floor, legs stretched out sideways, torso upright.
ON_THE_FLOOR = np.array([
    (0.0, 0.43), (-0.02, 0.445), (0.02, 0.445), (-0.05, 0.43), (0.05, 0.43),
    (-0.13, 0.32), (0.13, 0.32), (-0.16, 0.15), (0.16, 0.15), (-0.12, 0.05), (0.12, 0.05),
    (-0.09, 0.03), (0.09, 0.03), (0.15, 0.05), (0.33, 0.05), (0.38, 0.03), (0.56, 0.03),
])


def tipped(angle_deg: float) -> np.ndarray:
    """The standing pose rotated about the feet by `angle_deg` in the image plane (a
    sideways fall; 90 = lying on the floor)."""
    a = np.radians(angle_deg)
    x, h = STANDING[:, 0], STANDING[:, 1]
    return np.column_stack([x * np.cos(a) + h * np.sin(a), np.maximum(h * np.cos(a) - x * np.sin(a), 0.0)])


def blend(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    return (1 - w) * a + w * b


def fall_angle(t: float, start: float, duration: float) -> float:
    """Tipping angle of a fall starting at `start` and hitting the floor `duration` later
    (accelerating, like a falling body)."""
    return 90.0 * float(np.clip((t - start) / duration, 0, 1)) ** 2


@dataclass
class View:
    """An image in which a pose (body heights, see STANDING) is drawn `body_px` tall with its
    feet at (`foot_x`, `floor_y`)."""

    width: int = 640
    height: int = 480
    body_px: float = 300.0
    foot_x: float = 320.0
    floor_y: float = 420.0

    def _pixels(self, pose: np.ndarray, shift_x: float) -> np.ndarray:
        return np.column_stack([self.foot_x + shift_x + self.body_px * pose[:, 0],
                                self.floor_y - self.body_px * pose[:, 1]])

    def keypoints(self, pose: np.ndarray, shift_x: float = 0.0) -> np.ndarray:
        """(17, 3) pixels and confidence."""
        return self._with_confidence(self._pixels(pose, shift_x))

    def box(self, pose: np.ndarray, shift_x: float = 0.0) -> np.ndarray:
        """The detector's box."""
        return self._box_around(self._pixels(pose, shift_x))

    def _with_confidence(self, xy: np.ndarray) -> np.ndarray:
        """Joints outside the image get a low confidence at the border, as a keypoint model
        guesses them."""
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < self.width) & (xy[:, 1] >= 0) & (xy[:, 1] < self.height)
        clipped = np.clip(xy, 0, [self.width - 1, self.height - 1])
        return np.column_stack([clipped, np.where(inside, 0.9, 0.05)]).astype(np.float32)

    def _box_around(self, xy: np.ndarray) -> np.ndarray:
        """The joints' extent grown like a body's outline, cut by the frame."""
        low, high = xy.min(axis=0), xy.max(axis=0)
        margin = np.maximum(high - low, 1.0) * [0.1, 0.08]
        return np.clip(np.concatenate([low - margin, high + margin]), 0,
                       [self.width, self.height, self.width, self.height]).astype(np.float32)


@dataclass
class Shot:
    """One frame of a synthetic clip: its time and the tracked people in it."""

    time: float
    people: list[tuple[int, np.ndarray, float]]   # (track id, pose, sideways shift px)
    ended: tuple[int, ...] = ()


def play(shots: list[Shot], view: View = View(), params: dict | None = None,
         kpts3d=None) -> tuple[list[Event], list[list[dict]], PluginStage]:
    """Run the fall plugin stage over the shots; (events, per-frame annotations, stage).
    kpts3d: optional function (time, track id) -> (17, 4) joints in metres."""
    spec = schema.Plugin(id="fall", type="plugin", plugin="fall", params=params or {})
    stage = PluginStage("fall", spec, StageContext(graph_dir=Path("."), output_dir=Path(".")))
    events, annotations = [], []
    for frame in shot_frames(shots, view, kpts3d):
        stage.run([frame])
        events += frame.events
        annotations.append(frame.persons.annotations)
    return events, annotations, stage


def shot_frames(shots: list[Shot], view: View = View(), kpts3d=None) -> list[Frame]:
    """The frames of stream "cam" that film the shots (tracked people with keypoints)."""
    image = np.zeros((view.height, view.width, 3), np.uint8)
    frames = []
    for index, shot in enumerate(shots):
        boxes = [view.box(pose, shift) for _, pose, shift in shot.people]
        persons = Persons.from_boxes(np.array(boxes).reshape(-1, 4), np.full(len(boxes), 0.9))
        persons.track_ids[:] = [track_id for track_id, _, _ in shot.people]
        persons.keypoints = np.array([view.keypoints(pose, shift) for _, pose, shift in shot.people],
                                     np.float32).reshape(-1, 17, 3)
        if kpts3d is not None:
            persons.kpts3d = np.array([kpts3d(shot.time, track_id) for track_id, _, _ in shot.people],
                                      np.float32).reshape(-1, 17, 4)
        frames.append(Frame("cam", index, image, time.time(), shot.time, persons=persons,
                            ended_tracks=list(shot.ended)))
    return frames


def times(fps: float, start: float, end: float) -> np.ndarray:
    return np.arange(round(start * fps), round(end * fps)) / fps


def fall_clip(fps: float, fall_start: float = 2.0, fall_s: float = 0.6, end: float = 5.0) -> list[Shot]:
    """Standing, then a sideways fall hitting the floor at fall_start + fall_s, then lying."""
    return [Shot(t, [(1, tipped(fall_angle(t, fall_start, fall_s)), 0.0)]) for t in times(fps, 0, end)]


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def first(events: list[Event], kind: str) -> Event:
    return next(e for e in events if e.kind == kind)


# ----------------------------------------------------------------- state machine

@pytest.mark.parametrize("fps", [3, 10, 30])
def test_a_fall_is_confirmed_by_media_time_whatever_the_frame_rate(fps):
    events, annotations, _ = play(fall_clip(fps))
    assert kinds(events) == ["fall_started", "fall_confirmed"]
    started, confirmed = first(events, "fall_started"), first(events, "fall_confirmed")
    on_ground = 2.6
    assert 2.0 < started.media_time <= on_ground + 1 / fps
    # confirm_s of lying after the start, measured in media time, not frames; the first
    # frame read down counts half the gap before it (the person went down somewhere in it).
    assert started.media_time + CONFIRM_S - 0.5 / fps - 1e-6 <= confirmed.media_time
    assert confirmed.media_time <= started.media_time + CONFIRM_S + 1 / fps + 1e-6
    assert confirmed.media_time <= on_ground + 1.5
    assert confirmed.track_id == 1 and confirmed.score > 0.5
    # The features that triggered it travel with the event, as JSON.
    assert started.data["drop"] > 0.25 and started.data["posture"] >= 0.5
    assert {"torso_angle", "head_above_hips"} <= set(started.data["cues"])
    for event in events:
        assert messages.decode(messages.encode(messages.event_message(event, 0), "json"))["data"] == event.data
    # Every frame carries a score and a state; states only move forward.
    states = [a[0]["fall_state"] for a in annotations]
    assert all(0.0 <= a[0]["fall_score"] <= 1.0 for a in annotations)
    assert states[0] == "upright" and states[-1] == "fallen"
    order = ["upright", "falling", "fallen"]
    assert [order.index(s) for s in states] == sorted(order.index(s) for s in states)


def test_at_3_fps_the_first_frame_down_counts_half_the_gap_before_it():
    """Frames 0.33 s apart: she went down somewhere between the last frame read upright and the
    first read down, on average half way. Counting that half (0.17 s) confirms the fall two frames
    after it starts (0.17 + 0.67 s >= confirm_s 0.8), not three (1.0 s, 0.2 s later than at 30 fps)."""
    events, _, _ = play(fall_clip(3), params={"confirm_s": 0.8})
    started, confirmed = first(events, "fall_started"), first(events, "fall_confirmed")
    assert confirmed.media_time - started.media_time == pytest.approx(2 / 3)
    assert confirmed.data["down_s"] == pytest.approx(0.5 / 3 + 2 / 3, abs=1e-3)


@pytest.mark.parametrize("sit_s", [0.6, 1.5])
@pytest.mark.parametrize("fps", [3, 25])
def test_sitting_down_on_a_chair_and_standing_up_raises_nothing(fps, sit_s):
    def pose(t):
        if t < 2:
            return STANDING
        if t < 2 + sit_s:
            return blend(STANDING, SITTING, (t - 2) / sit_s)
        if t < 6:
            return SITTING
        return blend(SITTING, STANDING, min((t - 6) / 1.2, 1.0))

    events, annotations, _ = play([Shot(t, [(1, pose(t), 0.0)]) for t in times(fps, 0, 9)])
    assert events == []
    assert max(a[0]["fall_score"] for a in annotations) < 0.5
    assert {a[0]["fall_state"] for a in annotations} == {"upright"}


def test_a_person_seen_lying_from_the_start_never_falls():
    """Push-ups, someone asleep on the floor: low, but never seen going down from upright."""
    def pose(t):
        return tipped(80 + 10 * np.sin(2 * np.pi * t / 2.5))   # rocking like push-ups

    events, annotations, _ = play([Shot(t, [(1, pose(t), 0.0)]) for t in times(30, 0, 8)])
    assert events == []
    assert {a[0]["fall_state"] for a in annotations} == {"down"}
    assert max(a[0]["fall_score"] for a in annotations) == 0.0


def test_lying_down_on_purpose_is_not_a_fall():
    """Sitting down on the floor (1.5 s), then lying back (1.5 s): down, but not fast from upright."""
    def pose(t):
        if t < 2:
            return STANDING
        if t < 3.5:
            return blend(STANDING, ON_THE_FLOOR, (t - 2) / 1.5)
        return blend(ON_THE_FLOOR, tipped(90), min((t - 3.5) / 1.5, 1.0))

    for fps in (3, 30):
        events, annotations, _ = play([Shot(t, [(1, pose(t), 0.0)]) for t in times(fps, 0, 8)])
        assert events == []
        assert annotations[-1][0]["fall_state"] == "down"


def test_a_short_gap_in_timestamps_still_counts_as_lying():
    # 0.5 s without frames, across the time the fall (started at 2.5 s) is confirmed: at the first
    # frame after the gap, its time counted as lying.
    shots = [s for s in fall_clip(10) if not 2.9 < s.time < 3.4]
    events, _, _ = play(shots, params={"confirm_s": 0.8})
    assert kinds(events) == ["fall_started", "fall_confirmed"]
    confirmed = first(events, "fall_confirmed")
    assert confirmed.media_time <= first(events, "fall_started").media_time + 0.8 + 0.1 + 1e-6


def test_a_long_gap_does_not_count_as_lying_time():
    """Lying 0.3 s, then 3 s without frames: the 3 s are unobserved, so the confirmation
    needs the rest of confirm_s, lying after the gap."""
    shots = [s for s in fall_clip(10, end=8.0) if not 3.0 < s.time < 6.0]
    events, _, _ = play(shots)
    started, confirmed = first(events, "fall_started"), first(events, "fall_confirmed")
    lying_before_gap = 3.0 - started.media_time
    assert confirmed.media_time >= 6.0 + (CONFIRM_S - lying_before_gap) - 0.1 - 1e-6
    assert confirmed.data["down_s"] == pytest.approx(CONFIRM_S, abs=0.11)


def test_a_person_who_leaves_the_frame_while_on_the_floor_is_confirmed_when_the_track_ends():
    shots = [s for s in fall_clip(10, end=3.0)]                       # 0.4 s on the floor
    shots += [Shot(t, []) for t in times(10, 3.0, 4.0)]               # out of view (slid, crawled)
    shots.append(Shot(4.0, [], ended=(1,)))                           # the tracker ends the track
    events, _, stage = play(shots)
    assert kinds(events) == ["fall_started", "fall_confirmed"]
    confirmed = first(events, "fall_confirmed")
    assert confirmed.media_time == 4.0 and confirmed.track_id == 1
    assert confirmed.data["lost_while_down"] is True and confirmed.data["last_seen"] == pytest.approx(2.9)
    messages.encode(messages.event_message(confirmed, 40), "json")
    assert stage.live_states == 0

    events, _, _ = play(shots, params={"confirm_when_lost": False})
    assert kinds(events) == ["fall_started"]


@pytest.mark.parametrize(("angle", "confirmed"), [(60, True), (50, False), (0, False)])
def test_a_person_lost_half_way_down_a_fast_fall_is_confirmed_when_the_track_ends(angle, confirmed):
    """Tips 60 degrees in 0.3 s (posture 0.49: past lying_release, not yet down) and is lost
    (a lying body the detector misses, a falling object hiding it): confirmed when the tracker
    ends the track. Bending 50 degrees (posture 0.18) or walking out of view is no fall."""
    shots = [Shot(t, [(1, tipped(angle * float(np.clip((t - 2) / 0.3, 0, 1))), 0.0)]) for t in times(10, 0, 2.6)]
    shots += [Shot(t, []) for t in times(10, 2.6, 3.0)] + [Shot(3.0, [], ended=(1,))]
    events, _, _ = play(shots)
    if confirmed:
        assert kinds(events) == ["fall_confirmed"] and events[0].media_time == 3.0
        assert events[0].data["lost_while_down"] is True and events[0].data["last_seen"] == pytest.approx(2.5)
    else:
        assert events == []


def test_walking_behind_a_counter_is_no_drop():
    """Steps behind a kitchen counter that hides legs and hips within 0.1 s: the box's bottom
    rises to the counter's top, which is no floor moving up the image (only ankles seen in both
    frames show that), so the body has not dropped and nothing is raised. Read as a floor 0.6
    body heights higher, it was a fall of about that depth."""
    view = View()
    counter_top = view.floor_y - 0.6 * view.body_px
    spec = schema.Plugin(id="fall", type="plugin", plugin="fall", params={})
    stage = PluginStage("fall", spec, StageContext(graph_dir=Path("."), output_dir=Path(".")))
    events = []
    for frame in shot_frames([Shot(t, [(1, STANDING, 0.0)]) for t in times(10, 0, 5)], view):
        if frame.media_time >= 2.0:
            hidden = frame.persons.keypoints[0, :, 1] > counter_top
            frame.persons.keypoints[0, hidden, 2] = 0.05
            frame.persons.boxes[0, 3] = counter_top
        stage.run([frame])
        events += frame.events
    assert events == []


def test_a_lying_body_cut_by_the_side_edge_is_confirmed():
    """Falls towards the right edge and lies there with the head outside the frame."""
    view = View(foot_x=380)   # lying, the head reaches 380 + 0.93 * 300 = 659 > 640
    events, _, _ = play(fall_clip(10), view)
    assert kinds(events) == ["fall_started", "fall_confirmed"]


def test_a_track_broken_by_the_fall_hands_its_history_to_the_new_track():
    """At a low frame rate the tracker may lose the falling body and start a new id for it
    on the floor: the new track continues the old one's history, and only it raises events."""
    shots = []
    for shot in fall_clip(5, end=5.0):
        pose = shot.people[0][1]
        if 2.3 <= shot.time < 2.8:
            shot.people = []                             # lost while falling
        elif shot.time >= 2.8:
            shot.people = [(2, pose, 0.0)]               # found again on the floor, as track 2
        if shot.time == 3.6:
            shot.ended = (1,)
        shots.append(shot)
    events, _, stage = play(shots)
    assert kinds(events) == ["fall_started", "fall_confirmed"]
    assert first(events, "fall_confirmed").track_id == 2
    assert first(events, "fall_confirmed").media_time <= 2.6 + 1.5

    # Someone else appearing far from where track 1 was lost inherits nothing.
    for shot in shots:
        if shot.people and shot.people[0][0] == 2:
            shot.people = [(2, shot.people[0][1], -350.0)]
    events, _, _ = play(shots)
    assert all(e.track_id == 1 for e in events) and "fall_confirmed" not in kinds(events)


def test_standing_up_again_recovers_and_the_next_fall_is_caught_too():
    def pose(t):
        if t < 5:
            return tipped(fall_angle(t, 2.0, 0.6))
        if t < 9:                                          # gets up over 1.5 s, stands
            return tipped(90 * (1 - min((t - 5) / 1.5, 1)))
        return tipped(fall_angle(t, 9.0, 0.6))

    events, annotations, _ = play([Shot(t, [(1, pose(t), 0.0)]) for t in times(10, 0, 12)])
    assert kinds(events) == ["fall_started", "fall_confirmed", "fall_recovered", "fall_started", "fall_confirmed"]
    recovered = first(events, "fall_recovered")
    assert 6.0 < recovered.media_time < 8.0
    assert annotations[80][0]["fall_state"] == "recovered"   # t = 8.0


def test_sitting_on_the_floor_after_a_fall_is_no_recovery():
    """Falls, then sits up on the floor (torso upright, hips on the ground) for 3 s, then stands:
    fall_recovered comes only once on their feet."""
    def pose(t):
        if t < 5:
            return tipped(fall_angle(t, 2.0, 0.6))
        if t < 6:
            return blend(tipped(90), ON_THE_FLOOR, t - 5)
        if t < 9:
            return ON_THE_FLOOR
        return blend(ON_THE_FLOOR, STANDING, min(t - 9, 1.0))

    events, annotations, _ = play([Shot(t, [(1, pose(t), 0.0)]) for t in times(10, 0, 12)],
                                  params={"down_alarm_s": 0})   # no long-lie alarm, for this test
    assert kinds(events) == ["fall_started", "fall_confirmed", "fall_recovered"]
    assert first(events, "fall_recovered").media_time > 10.0
    assert annotations[85][0]["fall_state"] == "fallen"   # t = 8.5, sitting on the floor


def test_a_long_lie_raises_person_down_however_the_person_got_there():
    """Lying down on purpose is no fall, but lying on the floor for down_alarm_s is an alarm,
    once; someone seen only on the floor (never upright) raises nothing."""
    def pose(t):
        if t < 2:
            return STANDING
        if t < 3.5:
            return blend(STANDING, ON_THE_FLOOR, (t - 2) / 1.5)
        return blend(ON_THE_FLOOR, tipped(90), min((t - 3.5) / 1.5, 1.0))

    for fps in (3, 30):
        events, _, _ = play([Shot(t, [(1, pose(t), 0.0)]) for t in times(fps, 0, 20)], params={"down_alarm_s": 6})
        assert kinds(events) == ["person_down"]
        assert 9.0 < events[0].media_time < 11.5 and events[0].data["lying_s"] >= 6
    events, _, _ = play([Shot(t, [(1, tipped(90), 0.0)]) for t in times(10, 0, 20)], params={"down_alarm_s": 6})
    assert events == []


def test_a_stream_gap_ends_the_tracks_state_and_emits_its_last_events():
    events, _, stage = play(fall_clip(10, end=3.0))                   # 0.4 s on the floor, then the camera drops
    assert kinds(events) == ["fall_started"]
    assert isinstance(stage.plugin, FallDetector) and stage.live_states == 1 and stage.outbox == []
    stage.stream_event(StreamEvent("cam", "lost", 0, "read timeout"))
    assert stage.live_states == 0
    # No frame carries it: it leaves on the events path (Stage.emit), stamped with the last sighting.
    [(stream, [confirmed])] = stage.outbox
    assert stream == "cam" and confirmed.kind == "fall_confirmed" and confirmed.media_time == pytest.approx(2.9)
    assert confirmed.data["lost_while_down"] is True


def test_inconsistent_hysteresis_is_a_clear_error():
    with pytest.raises(ValueError, match=r"params: lying_release \(0.6\) must be below lying_threshold \(0.5\)"):
        play([], params={"lying_release": 0.6})
    with pytest.raises(ValueError, match=r"params.confirm_s"):
        play([], params={"confirm_s": -1})
    with pytest.raises(ValueError, match=r"params.confirm_secs"):
        play([], params={"confirm_secs": 1})


# ----------------------------------------------------------------- a camera in a room

@dataclass
class Camera(View):
    """A pinhole camera `height_m` above a flat floor, pitched down by `pitch_deg`, with its
    principal point at (width / 2, `centre_y`). Poses given to it are world joints (17, 3):
    metres, x right, y up from the floor, z away from the camera."""

    height_m: float = 1.2
    pitch_deg: float = 0.0
    focal_px: float = 500.0
    centre_y: float = 240.0

    def camera_frame(self, world: np.ndarray) -> np.ndarray:
        """(17, 3) in the camera's axes (x right, y down, z forward), metres."""
        p = np.radians(self.pitch_deg)
        d = world - [0.0, self.height_m, 0.0]
        return np.column_stack([d[:, 0], -d[:, 1] * np.cos(p) - d[:, 2] * np.sin(p),
                                -d[:, 1] * np.sin(p) + d[:, 2] * np.cos(p)])

    def joints_3d(self, world: np.ndarray) -> np.ndarray:
        """(17, 4) camera-frame joints with confidence, as a 3D stage gives them."""
        return np.column_stack([self.camera_frame(world), np.full(17, 0.9)]).astype(np.float32)

    def _pixels(self, pose: np.ndarray, shift_x: float) -> np.ndarray:
        cam = self.camera_frame(pose)
        return self.focal_px * cam[:, :2] / cam[:, 2:] + [self.width / 2 + shift_x, self.centre_y]

    def keypoints(self, pose: np.ndarray, shift_x: float = 0.0) -> np.ndarray:
        return self._with_confidence(self._pixels(pose, shift_x))

    def box(self, pose: np.ndarray, shift_x: float = 0.0) -> np.ndarray:
        return self._box_around(self._pixels(pose, shift_x))


def in_room(pose: np.ndarray, distance_m: float, height_m: float = 1.75) -> np.ndarray:
    """A pose (body heights, facing the camera) as world joints `distance_m` ahead."""
    return np.column_stack([pose[:, 0] * height_m, pose[:, 1] * height_m, np.full(17, distance_m)])


def backward_fall(t: float, start: float, distance_m: float, height_m: float = 1.75) -> np.ndarray:
    """World joints of a person `distance_m` ahead falling straight away from the camera."""
    a = np.radians(fall_angle(t, start, 0.6))
    x, h = STANDING[:, 0] * height_m, STANDING[:, 1] * height_m
    return np.column_stack([x, h * np.cos(a), distance_m + h * np.sin(a)])


def test_legs_cut_by_the_frame_edge():
    """A camera at 1.2 m framing a person 3 m away from the knees up (the box ends at the
    bottom edge; the keypoint model guesses the ankles there): walking closer raises nothing;
    falling backwards away from the camera, the body looks upright in the image but short,
    and the fall is confirmed from the visible joints alone."""
    view = Camera(height=370, centre_y=200)   # ankles at 388 px: below the frame
    walk = [Shot(t, [(1, in_room(STANDING, 4.0 - 0.5 * t), 0.0)]) for t in times(10, 0, 3)]
    events, annotations, _ = play(walk, view)
    assert events == [] and max(a[0]["fall_score"] for a in annotations) < 0.5

    shots = [Shot(t, [(1, backward_fall(t, 2.0, 3.0), 0.0)]) for t in times(10, 0, 5)]
    assert view.keypoints(shots[0].people[0][1])[15:, 2].max() < 0.1       # the ankles are cut
    events, _, _ = play(shots, view)
    assert kinds(events) == ["fall_started", "fall_confirmed"]
    assert first(events, "fall_confirmed").media_time <= 2.6 + 1.5


# ----------------------------------------------------------------- 3D joints

HIGH_CAMERA = Camera(height_m=3.0, pitch_deg=35.0)


def test_with_3d_joints_a_fall_away_from_a_high_camera_is_confirmed_from_3d_cues():
    shots = [Shot(t, [(1, backward_fall(t, 2.0, 3.0), 0.0)]) for t in times(10, 0, 5)]
    events, _, _ = play(shots, HIGH_CAMERA, params={"use_3d": True},
                        kpts3d=lambda t, _: HIGH_CAMERA.joints_3d(backward_fall(t, 2.0, 3.0)))
    assert kinds(events) == ["fall_started", "fall_confirmed"]
    cues = first(events, "fall_confirmed").data["cues"]
    # 3D angles and heights: the torso is horizontal and the hips on the floor, in 3D.
    assert "torso_length" not in cues
    assert cues["torso_angle"] > 70 and cues["hips_above_ground"] < 0.1


def test_with_3d_joints_sitting_down_raises_nothing():
    def world(t):
        return in_room(blend(STANDING, SITTING, float(np.clip((t - 2) / 0.8, 0, 1))), 3.0)

    shots = [Shot(t, [(1, world(t), 0.0)]) for t in times(10, 0, 6)]
    events, annotations, _ = play(shots, HIGH_CAMERA, params={"use_3d": True},
                                  kpts3d=lambda t, _: HIGH_CAMERA.joints_3d(world(t)))
    assert events == [] and max(a[0]["fall_score"] for a in annotations) < 0.5


# ----------------------------------------------------------------- the labelled videos

LABELS = yaml.safe_load((MEDIA / "labels.yml").read_text())
# A CI-sized subset of the 48 labelled clips (streampose evaluate falls scores them all, from
# its pose cache, in docs/falls.md): two falls the detector catches and two clips without one,
# 460 frames through the full graph.
FALL_CLIPS = ["fall_faint_studio_1280x720.mp4", "fall_cctv_lift_collapse.mp4"]
OTHER_CLIPS = ["mmaction2_demo_skeleton_2persons.mp4", "office_man_walking_1280x720.mp4"]


def evaluate(out: Path, clips: list[str], *options: str) -> dict:
    """Run `streampose evaluate falls` over `clips`; its JSON report."""
    result = subprocess.run([sys.executable, "-m", "streampose", "evaluate", "falls", "--videos", str(VIDEOS),
                             "--labels", str(MEDIA / "labels.yml"), "--models", str(MODELS), "-o", str(out),
                             *options, *(option for clip in clips for option in ("--clip", clip))],
                            capture_output=True, text=True, timeout=900, cwd=REPO)
    assert (out / "falls.json").is_file(), result.stderr
    print(result.stdout)
    report = json.loads((out / "falls.json").read_text())
    assert result.returncode == (0 if report["totals"]["passed"] == report["totals"]["clips"] else 1)
    assert "| clip | labelled | detected | delay | false alarms |" in result.stdout
    return report


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory) -> dict[str, dict]:
    """The subset through the full graph (--no-cache: detector and keypoints run too)."""
    out = tmp_path_factory.mktemp("falls")
    report = evaluate(out, FALL_CLIPS + OTHER_CLIPS, "--no-cache")
    assert sorted((out / "timelines").iterdir()) == sorted(out / "timelines" / f"{Path(c).stem}.png"
                                                          for c in FALL_CLIPS + OTHER_CLIPS)
    return {r["clip"]: r for r in report["clips"]}


def test_the_evaluation_covers_every_clip_frame_by_frame(evaluation):
    assert sorted(evaluation) == sorted(FALL_CLIPS + OTHER_CLIPS)
    for clip, result in evaluation.items():
        assert result["frames"] == LABELS[clip]["frame_count"], clip


@pytest.mark.parametrize("clip", FALL_CLIPS)
def test_a_labelled_fall_raises_the_alarm_in_time(evaluation, clip):
    result = evaluation[clip]
    for fall in result["falls"]:
        assert fall["detected"], f"{clip}: no fall_confirmed for the fall at {fall}; got {result['alarms']}"
        assert fall["start_s"] - fall["on_ground_s"] <= fall["delay"] <= 1.5
    assert result["false_alarms"] == [] and result["passed"]


@pytest.mark.parametrize("clip", OTHER_CLIPS)
def test_no_alarm_without_a_fall(evaluation, clip):
    assert evaluation[clip]["alarms"] == [], f"{clip}: {evaluation[clip]['alarms']}"


def test_replaying_the_pose_cache_gives_what_the_full_graph_gives(evaluation, tmp_path):
    """The cache holds the detector's and keypoint stage's output; the tracker, smoother and
    plugin replayed from it raise the same alarms at the same frames as the full graph (the
    module's --no-cache evaluation, which covers both clips)."""
    clips = ["fall_faint_studio_1280x720.mp4", "mmaction2_demo_skeleton_2persons.mp4"]
    cached = evaluate(tmp_path / "cached", clips, "--cache", str(tmp_path / "cache"), "--no-plots")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    again = evaluate(tmp_path / "again", clips, "--cache", str(tmp_path / "cache"), "--no-plots")
    assert [b["clip"] for b in cached["clips"]] == [c["clip"] for c in again["clips"]] == clips
    for b, c in zip(cached["clips"], again["clips"]):
        a = evaluation[b["clip"]]
        assert a["frames"] == b["frames"] == c["frames"]
        assert a["alarms"] == b["alarms"] == c["alarms"], a["clip"]


def test_clips_without_a_labelled_fall_are_scored_too(tmp_path):
    """`evaluate falls --clip` on a clip with no labelled fall (checking that a burpee or a walk
    raises nothing) reports its alarms, with no recall to give."""
    report = evaluate(tmp_path / "out", ["office_man_walking_1280x720.mp4"], "--cache", str(tmp_path / "cache"),
                      "--no-plots")
    assert report["totals"]["falls"] == 0 and report["totals"]["recall"] is None
    assert "1 clips, 1 pass; no labelled fall; false alarms 0 in 0.1 min" in (tmp_path / "out" / "falls.md").read_text()


def test_cross_validation_pooled_over_frame_rates_chooses_for_the_slow_cameras_too():
    """`evaluate falls --cv --cv-fps 5`: each clip is also scored re-encoded at 5 fps, a fold
    holds a source out at every rate and chooses on the other sources at every rate. Here the
    clips' own rate catches every fall at both `min_speed` values, a little sooner at 0.5,
    and 5 fps only at 0.3: chosen at the own rate alone, 0.5 would miss every slow camera's fall."""
    label = {"duration_s": 6.0, "falls": [{"start_s": 1.0, "on_ground_s": 2.0}]}
    clips = {"a.mp4": "source_a", "b.mp4": "source_b", "c.mp4": "source_c"}

    def run(delay: float | None) -> ClipRun:
        events = [] if delay is None else [{"kind": "fall_confirmed", "time": 2.0 + delay}]
        return ClipRun(duration=6.0, frames=60, events=events)

    def evaluate_point(params: dict, rates: tuple[str, ...]) -> list[dict]:
        results = []
        for clip in clips:
            results.append(judge(clip, label, run(0.5 if params["min_speed"] == 0.5 else 0.7), 30.0))
            if "5 fps" in rates:
                results.append(judge(f"{clip} @ 5 fps", label, run(0.9 if params["min_speed"] == 0.3 else None), 30.0))
        return results

    own_only = cross_validate(list(clips), clips, lambda params: evaluate_point(params, ("own rate",)))
    assert own_only["in_sample_params"]["min_speed"] == 0.5 and "by_rate" not in own_only

    keys = {c: "own rate" for c in clips} | {f"{c} @ 5 fps": "5 fps" for c in clips}
    pooled = cross_validate(list(keys), {k: clips[k.split(" @ ")[0]] for k in keys},
                            lambda params: evaluate_point(params, ("own rate", "5 fps")), keys)
    assert [sorted(fold["clips"]) for fold in pooled["folds"]] == [[c, f"{c} @ 5 fps"] for c in clips]
    assert all(fold["params"]["min_speed"] == 0.3 for fold in pooled["folds"])
    held_out = pooled["by_rate"]
    assert (held_out["own rate"]["held_out"]["detected"], held_out["5 fps"]["held_out"]["detected"]) == (3, 3)
    assert held_out["5 fps"]["held_out"]["median_delay_s"] == 0.9 and pooled["held_out"]["detected"] == 6


def test_evaluate_falls_cross_validates_over_frame_rates(tmp_path):
    """`evaluate falls --cv-fps 5`: the clip is scored at its own rate and re-encoded at 5 fps,
    both in one leave-one-source-out run, with totals per rate."""
    clip = "fall_faint_studio_1280x720.mp4"
    report = evaluate(tmp_path / "out", [clip], "--cache", str(tmp_path / "cache"), "--no-plots", "--cv-fps", "5")
    cv = report["cv"]
    assert [fold["clips"] for fold in cv["folds"]] == [[clip, f"{clip} @ 5 fps"]]
    assert list(cv["by_rate"]) == ["own rate", "5 fps"]
    assert cv["by_rate"]["own rate"]["in_sample"]["falls"] == cv["by_rate"]["5 fps"]["in_sample"]["falls"] == 1
    assert cv["in_sample"]["falls"] == 2
    markdown = (tmp_path / "out" / "falls.md").read_text()
    assert "at own rate, held out: 1 clips" in markdown and "at 5 fps, in sample: 1 clips" in markdown


def test_a_clip_re_encoded_at_a_lower_frame_rate_keeps_its_times(tmp_path):
    """`evaluate falls --fps` scores alarms on the labels' timeline: each frame of the re-encoded
    clip, its time mapped back, is the source frame of that time (x264's B-frames start the
    written file two frames late, 0.42 s at 5 fps, which every delay used to carry)."""
    import av

    from streampose.evaluate.sources import resample

    source = VIDEOS / "fall_faint_studio_1280x720.mp4"
    with av.open(str(source)) as container:
        originals = {round(float(f.time), 3): f.to_ndarray(format="gray").astype(np.float32)
                     for f in container.decode(video=0)}
    offset = resample(source, tmp_path / "5fps.mp4", 5.0)
    with av.open(str(tmp_path / "5fps.mp4")) as container:
        written = [(float(f.time) + offset, f.to_ndarray(format="gray").astype(np.float32))
                   for f in container.decode(video=0)]
    assert len(written) == 11   # the first frame of every 0.2 s of 2.2 s
    for time_, image in written:
        nearest = min(originals, key=lambda t: float(np.abs(originals[t] - image).mean()))
        assert abs(time_ - nearest) < 1e-3, (time_, nearest)
