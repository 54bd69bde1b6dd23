"""The repetition counter (plugin reps): on synthetic stick figures whose joint angles follow
known repetitions, and through the full graph on the labelled shared videos."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from conftest import MEDIA, MODELS, VIDEOS
from test_publisher import wait_subscribed

from streampose.client import Subscriber
from streampose.frame import COCO_KEYPOINTS, Frame, Persons, StreamEvent
from streampose.graph import schema
from streampose.graph.loader import load_graph
from streampose.plugins.reps import SIGNAL_INDEX, RepCounter, body_signals
from streampose.plugins.stage import PluginStage
from streampose.runtime.pipeline import Pipeline
from streampose.runtime.stage import StageContext

FPS = 30.0
PX_PER_M = 300.0   # a person about 520 pixels tall


# ----------------------------------------------------------------------------- stick figures
# Joint positions in metres, x forward (side views) or to the person's left (front view),
# y up, ankles near the floor; `keypoints` maps them to image pixels.

def _unit(degrees: float) -> np.ndarray:
    """The unit vector `degrees` counter-clockwise from +x."""
    return np.array([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])


def keypoints(joints: dict[str, np.ndarray], floor_x: float, confidence: float = 0.9) -> np.ndarray:
    """(17, 3) COCO keypoints in pixels of a figure standing at pixel column floor_x on row 600.
    joints: per COCO name without side for side views (both sides share it, 2 cm apart), or
    with left_/right_ for front views."""
    points = []
    for name in COCO_KEYPOINTS:
        side, _, joint = name.partition("_")
        if name in joints:
            points.append(joints[name])
        elif joint in joints:
            points.append(joints[joint] + ([0.02, 0.0] if side == "left" else 0.0))
        else:
            points.append(joints["nose"])  # the rest of the face sits at the nose
    xy = np.array(points) * [PX_PER_M, -PX_PER_M] + [floor_x, 600.0]
    return np.concatenate([xy, np.full((17, 1), confidence)], axis=1).astype(np.float32)


def squat_joints(depth: float) -> dict[str, np.ndarray]:
    """Side view, facing +x; depth 0 standing, 1 thighs below level (knee angle 50 degrees)."""
    ankle = np.array([0.0, 0.08])
    shin_tilt, knee_angle, lean = 30 * depth, 180 - 130 * depth, 35 * depth
    knee = ankle + 0.45 * _unit(90 - shin_tilt)
    hip = knee + 0.45 * _unit(270 - shin_tilt - knee_angle)   # turning from the shin, behind the knee
    shoulder = hip + 0.55 * _unit(90 - lean)
    return {"ankle": ankle, "knee": knee, "hip": hip, "shoulder": shoulder,
            "elbow": shoulder + 0.3 * _unit(0), "wrist": shoulder + 0.58 * _unit(0),
            "nose": shoulder + np.array([0.1, 0.22])}


def push_up_joints(depth: float) -> dict[str, np.ndarray]:
    """Side view of a straight body on toes and hands; depth 0 arms straight, 1 chest down."""
    ankle = np.array([0.0, 0.1])
    shoulder_height = 0.62 - 0.47 * depth
    elevation = math.degrees(math.asin((shoulder_height - ankle[1]) / 1.35))
    shoulder = ankle + 1.35 * _unit(elevation)
    hip, knee = ankle + 0.8 * _unit(elevation), ankle + 0.4 * _unit(elevation)
    wrist = np.array([shoulder[0], 0.04])
    reach = np.linalg.norm(shoulder - wrist)
    elbow = (shoulder + wrist) / 2 + [-math.sqrt(max(0.29 ** 2 - (reach / 2) ** 2, 0.0)), 0.0]  # bends back
    return {"ankle": ankle, "knee": knee, "hip": hip, "shoulder": shoulder, "elbow": elbow, "wrist": wrist,
            "nose": shoulder + np.array([0.2, 0.05])}


def jumping_jack_joints(depth: float) -> dict[str, np.ndarray]:
    """Front view; depth 0 arms down and feet together, 1 hands overhead and feet wide."""
    joints = {"nose": np.array([0.0, 1.65])}
    for side, sign in (("left", 1), ("right", -1)):
        shoulder, hip = np.array([0.2 * sign, 1.45]), np.array([0.1 * sign, 0.95])
        ankle = np.array([sign * (0.1 + 0.4 * depth), 0.08])
        arm = 270 + sign * 170 * depth   # down, swinging out and up over the head
        joints |= {f"{side}_shoulder": shoulder, f"{side}_hip": hip, f"{side}_ankle": ankle,
                   f"{side}_knee": (hip + ankle) / 2, f"{side}_elbow": shoulder + 0.3 * _unit(arm),
                   f"{side}_wrist": shoulder + 0.6 * _unit(arm)}
    return joints


def _knee(hip: np.ndarray, ankle: np.ndarray, forward: float = 1.0) -> np.ndarray:
    """The knee of a 0.45 + 0.45 m leg from hip to ankle, bending toward +x (forward = 1)."""
    middle, along = (hip + ankle) / 2, ankle - hip
    reach = np.linalg.norm(along)
    out = math.sqrt(max(0.45 ** 2 - (reach / 2) ** 2, 0.0))
    normal = np.array([along[1], -along[0]]) / max(reach, 1e-9)
    return middle + forward * out * normal * (1 if normal[0] >= 0 else -1)


def lunge_joints(depth: float) -> dict[str, np.ndarray]:
    """Side view, facing +x, hands on the hips; depth 0 standing, 1 the front foot 0.85 m ahead,
    the hips down by half a leg, the rear knee near the floor."""
    rear_ankle, front_ankle = np.array([0.0, 0.08]), np.array([0.85 * depth, 0.08])
    hip = np.array([0.4 * depth, 0.98 - 0.48 * depth])
    shoulder = hip + np.array([0.0, 0.55])
    joints = {"nose": shoulder + np.array([0.1, 0.22]), "shoulder": shoulder, "hip": hip,
              "elbow": shoulder + np.array([-0.15, -0.25]), "wrist": hip + np.array([0.0, 0.05])}
    for side, ankle in (("left", front_ankle), ("right", rear_ankle)):
        joints |= {f"{side}_ankle": ankle, f"{side}_knee": _knee(hip, ankle)}
    return joints


def sit_up_joints(depth: float) -> dict[str, np.ndarray]:
    """Side view, lying on the back with the knees bent and the hands behind the head; depth 0
    lying, 1 the torso raised 70 degrees off the floor."""
    hip, ankle = np.array([0.0, 0.1]), np.array([0.62, 0.08])
    shoulder = hip + 0.55 * _unit(180 - 70 * depth)
    head = shoulder + 0.22 * _unit(180 - 70 * depth)
    return {"ankle": ankle, "knee": _knee(hip, ankle), "hip": hip, "shoulder": shoulder,
            "elbow": head + 0.2 * _unit(90 - 70 * depth), "wrist": head, "nose": head}


def burpee_joints(depth: float) -> dict[str, np.ndarray]:
    """Side view; depth 0 standing, 0.5 crouched with the hands on the floor, 1 a plank on
    straight arms (the push-up figure's top), then back the same way."""
    stand, crouch, plank = squat_joints(0.0), squat_joints(1.0), push_up_joints(0.0)
    crouch = crouch | {"wrist": crouch["ankle"] + [0.45, -0.04]}
    crouch["elbow"] = (crouch["shoulder"] + crouch["wrist"]) / 2
    if depth <= 0.5:
        a, b, f = stand, crouch, depth * 2
    else:
        shift = [crouch["wrist"][0] - plank["wrist"][0], 0.0]   # the plank's hands where the crouch put them
        a, b, f = crouch, {k: v + shift for k, v in plank.items()}, depth * 2 - 1
    return {k: (1 - f) * a[k] + f * b[k] for k in a}


def jump_shot_joints(depth: float) -> dict[str, np.ndarray]:
    """Front view of a jump with both hands up (a basketball jump shot): the feet stay under
    the hips, about a shoulder width apart, the whole body rises 0.4 m."""
    joints = {}
    for side, sign in (("left", 1), ("right", -1)):
        lift = np.array([0.0, 0.4 * depth])
        shoulder, hip = np.array([0.2 * sign, 1.45]) + lift, np.array([0.1 * sign, 0.95]) + lift
        ankle = np.array([0.2 * sign, 0.08]) + lift
        arm = 270 + sign * 170 * depth
        joints |= {f"{side}_shoulder": shoulder, f"{side}_hip": hip, f"{side}_ankle": ankle,
                   f"{side}_knee": (hip + ankle) / 2, f"{side}_elbow": shoulder + 0.3 * _unit(arm),
                   f"{side}_wrist": shoulder + 0.6 * _unit(arm)}
    joints["nose"] = np.array([0.0, 1.65 + 0.4 * depth])
    return joints


POSES = {"squat": squat_joints, "push_up": push_up_joints, "jumping_jack": jumping_jack_joints,
         "lunge": lunge_joints, "sit_up": sit_up_joints, "burpee": burpee_joints, "jump_shot": jump_shot_joints}


# ----------------------------------------------------------------------------- seen from the front
# 3D figures (x to the person's left, y up, z away from the camera) seen by a pinhole camera.

def project(points: dict[str, np.ndarray], camera_height: float, distance: float, tilt_deg: float,
            confidence: float = 0.9) -> np.ndarray:
    """(17, 3) keypoints of 3D joints (every COCO name but the face, which sits at the nose) seen
    by a 1000-pixel-focal camera at (0, camera_height, -distance) looking along +z, pitched down
    by tilt_deg; the image centre is (640, 360)."""
    c, s_ = math.cos(math.radians(tilt_deg)), math.sin(math.radians(tilt_deg))
    rows = []
    for name in COCO_KEYPOINTS:
        x, y, z = points.get(name, points["nose"]) - np.array([0.0, camera_height, -distance])
        y, z = c * y + s_ * z, -s_ * y + c * z      # pitch the camera down
        rows.append([640 + 1000 * x / z, 360 - 1000 * y / z, confidence])
    return np.array(rows, np.float32)


def front_push_up(depth: float) -> dict[str, np.ndarray]:
    """Push-up facing the camera, body along +z, elbows flaring out at the bottom."""
    joints = {}
    shoulder_y = 0.62 - 0.47 * depth
    for side, sign in (("left", 1), ("right", -1)):
        shoulder = np.array([0.2 * sign, shoulder_y, 0.0])
        wrist = np.array([0.25 * sign, 0.04, 0.0])
        reach = np.linalg.norm(shoulder - wrist)
        elbow = (shoulder + wrist) / 2 + [sign * math.sqrt(max(0.29 ** 2 - (reach / 2) ** 2, 0.0)), 0, 0]
        hip_z, ankle = 0.55, np.array([0.1 * sign, 0.1, 1.35])
        hip = np.array([0.12 * sign, shoulder_y + (0.1 - shoulder_y) * hip_z / 1.35, hip_z])
        joints |= {f"{side}_shoulder": shoulder, f"{side}_elbow": elbow, f"{side}_wrist": wrist,
                   f"{side}_hip": hip, f"{side}_knee": (hip + ankle) / 2, f"{side}_ankle": ankle}
    joints["nose"] = np.array([0.0, shoulder_y + 0.05, -0.2])
    return joints


def front_squat(depth: float) -> dict[str, np.ndarray]:
    """The side-view squat figure turned to face the camera: its forward axis is -z."""
    flat, joints = squat_joints(depth), {}
    for name in COCO_KEYPOINTS:
        side, _, joint = name.partition("_")
        if joint in flat:
            width = {"shoulder": 0.2, "elbow": 0.22, "wrist": 0.22, "hip": 0.12, "knee": 0.14, "ankle": 0.14}[joint]
            x, y = flat[joint]
            joints[name] = np.array([width * (1 if side == "left" else -1), y, -x])
    joints["nose"] = np.array([0.0, flat["nose"][1], -flat["nose"][0]])
    return joints


def depth_at(t: float, reps: int, period_s: float, start_s: float = 1.0) -> float:
    """Rest until start_s, then `reps` smooth full cycles of period_s, then rest."""
    if not start_s <= t <= start_s + reps * period_s:
        return 0.0
    return (1 - math.cos(2 * math.pi * (t - start_s) / period_s)) / 2


def frame_of(t: float, people: list[tuple[int, np.ndarray]], stream: str = "cam") -> Frame:
    """A frame at media time t with persons (track id, (17, 3) keypoints)."""
    kpts = np.array([k for _, k in people], np.float32).reshape(-1, 17, 3)
    boxes = np.concatenate([kpts[:, :, :2].min(axis=1), kpts[:, :, :2].max(axis=1)], axis=1)
    persons = Persons.from_boxes(boxes, np.full(len(people), 0.9))
    persons.track_ids = np.array([track for track, _ in people], np.int64)
    persons.keypoints = kpts
    return Frame(stream=stream, index=round(t * FPS), image=np.zeros((1, 1, 3), np.uint8), capture_time=t,
                 media_time=t, persons=persons)


def plugin_stage(tmp_path: Path, **params) -> PluginStage:
    spec = schema.Plugin(id="reps", type="plugin", plugin="reps", params=params)
    return PluginStage("reps", spec, StageContext(graph_dir=tmp_path, output_dir=tmp_path))


def run_sequence(stage: PluginStage, exercise: str, duration_s: float, depth, track_id: int = 1,
                 start_s: float = 0.0, figure=None) -> list[Frame]:
    """Frames at FPS of one person whose depth(t) drives the exercise's figure (or figure(depth),
    (17, 3) keypoints)."""
    figure = figure or (lambda d: keypoints(POSES[exercise](d), 400))
    frames = []
    for index in range(round(duration_s * FPS) + 1):
        t = start_s + index / FPS
        frame = frame_of(t, [(track_id, figure(depth(t)))])
        stage.run([frame])
        frames.append(frame)
    return frames


def rep_events(frames: list[Frame]) -> list:
    return [event for frame in frames for event in frame.events if event.kind == "rep"]


# ----------------------------------------------------------------------------- unit tests

def test_signals_of_stick_figures_match_their_construction():
    standing = body_signals(keypoints(squat_joints(0.0), 400), 0.3)
    bottom = body_signals(keypoints(squat_joints(1.0), 400), 0.3)
    assert standing[SIGNAL_INDEX["knee_angle_deg"]] == pytest.approx(180, abs=0.5)
    assert bottom[SIGNAL_INDEX["knee_angle_deg"]] == pytest.approx(50, abs=0.5)
    assert standing[SIGNAL_INDEX["hip_height"]] == pytest.approx(1.0, abs=0.01)
    assert bottom[SIGNAL_INDEX["torso_lean_deg"]] == pytest.approx(35, abs=0.5)
    # The same figure twice as large (nearer the camera) gives the same signals.
    near = keypoints(squat_joints(1.0), 400)
    near[:, :2] = (near[:, :2] - [400, 600]) * 2 + [400, 600]
    np.testing.assert_allclose(body_signals(near, 0.3), bottom, rtol=1e-6, atol=1e-6)
    top, low = (body_signals(keypoints(push_up_joints(d), 400), 0.3) for d in (0.0, 1.0))
    assert top[SIGNAL_INDEX["elbow_angle_deg"]] > 170 and low[SIGNAL_INDEX["elbow_angle_deg"]] < 60
    assert top[SIGNAL_INDEX["body_elevation_deg"]] == pytest.approx(math.degrees(math.asin(0.52 / 1.35)), abs=0.5)
    closed, open_ = (body_signals(keypoints(jumping_jack_joints(d), 400), 0.3) for d in (0.0, 1.0))
    assert closed[SIGNAL_INDEX["arm_elevation_deg"]] < 5 and open_[SIGNAL_INDEX["arm_elevation_deg"]] > 165
    assert closed[SIGNAL_INDEX["feet_spread"]] < 0.3 and open_[SIGNAL_INDEX["feet_spread"]] > 1.0
    # Keypoints below min_confidence give no signals.
    assert np.isnan(body_signals(keypoints(squat_joints(0.0), 400, confidence=0.2), 0.3)).all()


@pytest.mark.parametrize("exercise", ["squat", "push_up", "jumping_jack", "lunge", "sit_up", "burpee"])
def test_each_full_cycle_counts_once_with_its_data(tmp_path, exercise):
    stage = plugin_stage(tmp_path, exercise=exercise)
    frames = run_sequence(stage, exercise, 9.0, lambda t: depth_at(t, reps=3, period_s=2.0))
    events = rep_events(frames)
    assert [e.data["count"] for e in events] == [1, 2, 3]
    assert all(e.data["exercise"] == exercise and e.track_id == 1 for e in events)
    # Bottoms (the middle of each active phase) at 2, 4 and 6 s; raised on the way back up.
    np.testing.assert_allclose([e.data["bottom_time"] for e in events], [2.0, 4.0, 6.0], atol=0.05)
    assert all(e.data["bottom_time"] < e.media_time < e.data["bottom_time"] + 1.0 for e in events)
    assert all(0.5 < e.data["duration_s"] < 2.0 for e in events)
    assert frames[-1].persons.annotations[0] == {"exercise": exercise, "reps": 3}
    if exercise == "squat":
        assert events[0].data["range_of_motion"]["max_knee_bend_deg"] == pytest.approx(130, abs=1)
    # The other counters see nothing of it (sit-up: the up position is the rep's middle).
    for other in ("squat", "push_up", "jumping_jack", "lunge", "sit_up", "burpee"):
        if other != exercise:
            assert rep_events(run_sequence(plugin_stage(tmp_path, exercise=other), exercise, 9.0,
                                           lambda t: depth_at(t, reps=3, period_s=2.0))) == [], other



def test_repetitions_outside_the_duration_limits_do_not_count(tmp_path):
    # One cycle of the squat figure lasting 0.2 s: shorter than min_rep_s.
    fast = rep_events(run_sequence(plugin_stage(tmp_path, exercise="squat", min_rep_s=0.3), "squat", 3.0,
                                   lambda t: depth_at(t, reps=1, period_s=0.2)))
    assert fast == []
    # A 14 s cycle, out of the rest position for about 9.6 s: longer than max_rep_s.
    slow = rep_events(run_sequence(plugin_stage(tmp_path, exercise="squat", max_rep_s=8.0), "squat", 16.0,
                                   lambda t: depth_at(t, reps=1, period_s=14.0)))
    assert slow == []
    # The same slow repetition counts with a longer limit, and a fast one with a shorter minimum.
    assert len(rep_events(run_sequence(plugin_stage(tmp_path, exercise="squat", max_rep_s=12.0), "squat", 16.0,
                                       lambda t: depth_at(t, reps=1, period_s=14.0)))) == 1
    assert len(rep_events(run_sequence(plugin_stage(tmp_path, exercise="squat", min_rep_s=0.05), "squat", 3.0,
                                       lambda t: depth_at(t, reps=1, period_s=0.2)))) == 1


def test_only_full_cycles_count(tmp_path):
    # First seen at the bottom, then standing up: half a repetition.
    stage = plugin_stage(tmp_path, exercise="squat")
    assert rep_events(run_sequence(stage, "squat", 3.0, lambda t: depth_at(t + 2.0, reps=1, period_s=2.0))) == []
    # Goes down and the track ends before standing up again (the stage frees its state).
    stage = plugin_stage(tmp_path, exercise="squat")
    frames = run_sequence(stage, "squat", 2.0, lambda t: depth_at(t, reps=1, period_s=2.0))
    ended = frame_of(2.1, [])
    ended.ended_tracks.append(1)
    stage.run([ended])
    assert rep_events(frames) == [] and ended.events == [] and stage.live_states == 0
    # Keypoints lost (confidence 0) for a second around the bottom of the first of two reps,
    # longer than max_gap_s (0.7 s): the first does not count, the second does.
    assert [e.data["bottom_time"] for e in squats_with_keypoints_lost(tmp_path, FPS, 1.5, 2.5)] == \
        pytest.approx([4.0], abs=0.05)


def squats_with_keypoints_lost(tmp_path: Path, fps: float, lost_from: float, lost_to: float) -> list:
    """Two squats (bottoms at 2 and 4 s) seen at `fps`, keypoints lost (confidence 0) between
    `lost_from` and `lost_to` seconds; their rep events."""
    stage = plugin_stage(tmp_path, exercise="squat")
    frames = []
    for index in range(round(6.0 * fps)):
        t = index / fps
        kpts = keypoints(squat_joints(depth_at(t, reps=2, period_s=2.0)), 400,
                         confidence=0.0 if lost_from < t < lost_to else 0.9)
        frames.append(frame_of(t, [(1, kpts)]))
        stage.run([frames[-1]])
    return rep_events(frames)


def test_a_5_fps_camera_may_miss_two_frames_in_a_row(tmp_path):
    # At 5 fps two frames without keypoints at a squat's bottom leave 0.6 s between the frames
    # seen (a sit-up's lying frames at 5 fps, reps_situps_side_gym_mat: 0 of 9 counted when
    # max_gap_s was 0.5 s). Both squats count; three frames lost (0.8 s) break the first.
    two_lost = squats_with_keypoints_lost(tmp_path, 5.0, 1.7, 2.1)       # the frames at 1.8 and 2.0 s
    assert [e.data["bottom_time"] for e in two_lost] == pytest.approx([2.0, 4.0], abs=0.25)
    three_lost = squats_with_keypoints_lost(tmp_path, 5.0, 1.7, 2.3)     # and 2.2 s
    assert [e.data["bottom_time"] for e in three_lost] == pytest.approx([4.0], abs=0.25)


def test_two_people_side_by_side_keep_their_own_counts(tmp_path):
    """Track 7 squats 3 times with period 2 s, track 9 twice with period 3 s; the persons'
    row order swaps every frame, as a detector's order does."""
    stage = plugin_stage(tmp_path, exercise="squat")
    frames = []
    for index in range(round(9.0 * FPS)):
        t = index / FPS
        people = [(7, keypoints(squat_joints(depth_at(t, 3, 2.0)), 300)),
                  (9, keypoints(squat_joints(depth_at(t, 2, 3.0, start_s=1.5)), 900))]
        frames.append(frame_of(t, people[::-1] if index % 2 else people))
        stage.run([frames[-1]])
    events = rep_events(frames)
    assert [e.data["count"] for e in events if e.track_id == 7] == [1, 2, 3]
    assert [e.data["count"] for e in events if e.track_id == 9] == [1, 2]
    np.testing.assert_allclose([e.data["bottom_time"] for e in events if e.track_id == 9], [3.0, 6.0], atol=0.05)
    last = frames[-1].persons
    counts = {int(track): annotations["reps"] for track, annotations in zip(last.track_ids, last.annotations)}
    assert counts == {7: 3, 9: 2}


def test_track_state_is_freed_when_the_track_or_stream_ends(tmp_path):
    stage = plugin_stage(tmp_path)
    for index in range(10):
        standing = keypoints(squat_joints(0), 300)
        stage.run([frame_of(index / FPS, [(1, standing), (2, standing)]),
                       frame_of(index / FPS, [(5, standing)], stream="other")])
    assert stage.live_states == 3
    ended = frame_of(0.4, [(2, keypoints(squat_joints(0), 900))])
    ended.ended_tracks.append(1)
    stage.run([ended])
    assert stage.live_states == 2
    stage.stream_event(StreamEvent("other", "ended", 0))
    assert stage.live_states == 1


def test_auto_names_the_exercise_after_two_in_a_row(tmp_path):
    for exercise in ("squat", "push_up", "jumping_jack", "lunge", "sit_up", "burpee"):
        stage = plugin_stage(tmp_path)  # exercise: auto is the default
        frames = run_sequence(stage, exercise, 9.0, lambda t: depth_at(t, reps=3, period_s=2.0))
        events = rep_events(frames)
        assert [(e.data["exercise"], e.data["count"]) for e in events] == [(exercise, 1), (exercise, 2), (exercise, 3)]
        # Nothing is said after the first repetition; at the second both are counted.
        assert events[0].media_time == events[1].media_time
        np.testing.assert_allclose([e.data["bottom_time"] for e in events], [2.0, 4.0, 6.0], atol=0.05)
        before = [f for f in frames if f.media_time < events[0].media_time]
        assert all("reps" not in f.persons.annotations[0] for f in before)
        # A single repetition alone is never named.
        lone = plugin_stage(tmp_path)
        assert rep_events(run_sequence(lone, exercise, 5.0, lambda t: depth_at(t, reps=1, period_s=2.0))) == []


def test_bad_params_and_missing_keypoints_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"min_rep_s \(5.0\) must be below max_rep_s \(2.0\)"):
        plugin_stage(tmp_path, min_rep_s=5.0, max_rep_s=2.0)
    with pytest.raises(ValueError, match=r"params\.exercise"):
        plugin_stage(tmp_path, exercise="deadlift")
    with pytest.raises(ValueError, match=r"push_up_bottom_deg \(30.0\) must be above push_up_top_deg"):
        plugin_stage(tmp_path, push_up_bottom_deg=30.0)
    stage = plugin_stage(tmp_path)
    frame = frame_of(0.0, [(1, keypoints(squat_joints(0), 300))])
    frame.persons.keypoints = None
    with pytest.raises(ValueError, match="needs keypoints"):
        stage.run([frame])
    assert RepCounter.Params().exercise == "auto"


@pytest.mark.parametrize("camera", [(0.15, 2.5, 0.0), (1.0, 2.5, 20.0), (1.6, 3.0, 35.0)],
                         ids=["floor", "table", "standing"])
def test_push_ups_and_squats_seen_from_the_front_are_counted(tmp_path, camera):
    """A camera in front at floor, table or eye height: the push-up's torso is foreshortened
    (hips above or beside the shoulders in the image), the squat's thighs point at the camera."""
    height, distance, tilt = camera
    push_ups = rep_events(run_sequence(plugin_stage(tmp_path), "push_up", 9.0,
                                       lambda t: depth_at(t, reps=3, period_s=2.0),
                                       figure=lambda d: project(front_push_up(d), height, distance, tilt)))
    assert [(e.data["exercise"], e.data["count"]) for e in push_ups] == [("push_up", 1), ("push_up", 2), ("push_up", 3)]
    squat_camera = (max(height, 1.0), distance + 0.5, min(tilt, 20.0))
    squats = rep_events(run_sequence(plugin_stage(tmp_path), "squat", 9.0,
                                     lambda t: depth_at(t, reps=3, period_s=2.0),
                                     figure=lambda d: project(front_squat(d), *squat_camera)))
    assert [(e.data["exercise"], e.data["count"]) for e in squats] == [("squat", 1), ("squat", 2), ("squat", 3)]


def test_a_jump_with_the_arms_up_is_no_jumping_jack(tmp_path):
    """Jump shots, one after the other, feet under the hips: the arms go up, the legs never
    open wider than the shoulders; given the exercise or not, nothing counts."""
    for params in ({}, {"exercise": "jumping_jack"}):
        frames = run_sequence(plugin_stage(tmp_path, **params), "jump_shot", 9.0,
                              lambda t: depth_at(t, reps=4, period_s=1.5))
        assert rep_events(frames) == [], params
    # The same figure with the feet opening wide is a jumping jack.
    assert len(rep_events(run_sequence(plugin_stage(tmp_path, exercise="jumping_jack"), "jumping_jack", 9.0,
                                       lambda t: depth_at(t, reps=4, period_s=1.5)))) == 4


# ----------------------------------------------------------------------------- the full graph

LABELS = yaml.safe_load((MEDIA / "labels.yml").read_text()) if (MEDIA / "labels.yml").is_file() else {}
# The short ones of the labelled counting clips (each costs 10-30 s here); `streampose evaluate reps`
# runs all of them, and every other labelled clip, the same way.
EXERCISE_CLIPS = ["squat_side_view", "pushups_tutorial_pushup2", "jumping_jacks_Ibbu_1", "reps_squats_side_studio",
                  "reps_jumping_jacks_front_studio", "reps_pushups_side_home_floorcam", "reps_lunges_side_studio"]
# Nobody exercising: walking, and a squat down to a side plank (one arm propping, one bent: it
# was counted as push-ups when the better-seen arm alone was looked at).
WALKING_CLIPS = ["office_man_walking_1280x720", "crowd_walking_overhead", "mmaction2_demo_skeleton_2persons",
                 "adl_squat_down_to_side_lying_side_plank_studio"]
SIDE_BY_SIDE = "squat_and_jumping_jacks"


def side_by_side_video(path: Path) -> None:
    """The squat clip and the jumping-jacks clip side by side at 30 fps, as one 1312x640 video
    of 322 frames; the jumping jacks' last frame (standing, arms down) is held after it ends."""
    def decoded(name):
        with av.open(str(VIDEOS / f"{name}.mp4")) as container:
            return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]

    squat, jacks = decoded("squat_side_view"), decoded("jumping_jacks_Ibbu_1")
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1312, 640, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "20"}
        for index, left in enumerate(squat):
            canvas = np.zeros((640, 1312, 3), np.uint8)
            canvas[48:48 + 544, :960] = left
            canvas[:, 960:] = jacks[min(index, len(jacks) - 1)]
            output.mux(stream.encode(av.VideoFrame.from_ndarray(canvas, format="bgr24")))
        output.mux(stream.encode())


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory):
    """Every clip, and the side-by-side video, through file -> detector -> keypoints ->
    tracker -> smoother -> plugin reps (default params) -> publisher + jsonl; returns the
    rep events and the pose messages of each stream."""
    work = tmp_path_factory.mktemp("reps_graph")
    side_by_side_video(work / f"{SIDE_BY_SIDE}.mp4")
    videos = [VIDEOS / f"{clip}.mp4" for clip in EXERCISE_CLIPS + WALKING_CLIPS] + [work / f"{SIDE_BY_SIDE}.mp4"]
    bind = f"ipc://{work / 'events.sock'}"
    sources = "\n".join(f"  - {{id: {video.stem}, uri: {video}}}" for video in videos)
    graph = work / "reps.yml"
    graph.write_text(textwrap.dedent("""\
        sources:
        {sources}
        stages:
          - {{id: detect, type: detector, model: picodet_s_192_lcnet_pedestrian_ov}}
          - {{id: pose, type: keypoints, model: tinypose_128x96_ov, batch: {{max_size: 4}}}}
          - {{id: track, type: tracker}}
          - {{id: smooth, type: smoother}}
          - {{id: reps, type: plugin, plugin: reps}}
          - {{id: publish, type: publisher, bind: "{bind}"}}
          - {{id: log, type: jsonl, inputs: [reps], path: "{{stream}}.jsonl"}}
        runtime: {{metrics: {{bind: null}}}}
        """).format(sources=sources, bind=bind))
    pipeline = Pipeline(load_graph(graph), model_paths=[MODELS], output_dir=work)
    events = {video.stem: [] for video in videos}
    ended = set()
    with Subscriber(bind, topics=("event/", "status/"), timeout_s=120.0) as subscriber:
        wait_subscribed(pipeline.runners["publish"].stage, subscriber)
        pipeline.start()
        while ended != set(events):  # a stream's "ended" status comes after all its frames
            received = subscriber.recv_dict()
            assert received is not None, f"no message for 120 s; not ended: {set(events) - ended}"
            message = received[1]
            if message["type"] == "status" and message["kind"] == "ended":
                ended.add(message["stream"])
            elif message["type"] == "event":
                events[message["stream"]].append(message)
    assert pipeline.wait(60)
    poses = {stream: [json.loads(line) for line in (work / f"{stream}.jsonl").read_text().splitlines()]
             for stream in events}
    return events, poses


@pytest.mark.parametrize("clip", EXERCISE_CLIPS)
def test_labelled_repetitions_are_counted_exactly(graph_run, clip):
    events, poses = graph_run
    (exercise, label), = LABELS[f"{clip}.mp4"]["reps"].items()
    frames = {message["frame"] for message in poses[clip]}
    assert frames == set(range(LABELS[f"{clip}.mp4"]["frame_count"])), "every frame processed"
    reps = [event for event in events[clip] if event["kind"] == "rep"]
    assert [(e["data"]["exercise"], e["data"]["count"]) for e in reps] == [
        (exercise, n) for n in range(1, label["count"] + 1)]
    assert len({e["track_id"] for e in reps}) == 1
    # Each repetition's active phase is centred on the labelled bottom (push-ups: the
    # half repetition under the title card is not counted).
    np.testing.assert_allclose([e["data"]["bottom_time"] for e in reps], label["bottoms_s"], atol=0.25)
    # The running count rides on the person in every pose message after the first rep.
    track = reps[0]["track_id"]
    counts = [p["annotations"].get("reps") for m in poses[clip] for p in m["persons"] if p["track_id"] == track]
    assert counts[-1] == label["count"]
    assert [c for c in counts if c is not None] == sorted(c for c in counts if c is not None)


@pytest.mark.parametrize("clip", WALKING_CLIPS)
def test_nobody_walking_is_counted(graph_run, clip):
    events, poses = graph_run
    assert [e for e in events[clip] if e["kind"] == "rep"] == []
    assert any(m["persons"] for m in poses[clip])
    assert all("reps" not in p["annotations"] for m in poses[clip] for p in m["persons"])


def test_two_people_side_by_side_are_counted_apart(graph_run):
    events, poses = graph_run
    reps = [e for e in events[SIDE_BY_SIDE] if e["kind"] == "rep"]
    by_track = {}
    for event in reps:
        by_track.setdefault(event["track_id"], []).append((event["data"]["exercise"], event["data"]["count"]))
    assert sorted(by_track.values()) == [
        [("jumping_jack", n) for n in range(1, 13)], [("squat", n) for n in range(1, 4)]]
    # The squatter is the person on the left half.
    squatter = next(track for track, counted in by_track.items() if counted[0][0] == "squat")
    boxes = [p["box"] for m in poses[SIDE_BY_SIDE] for p in m["persons"] if p["track_id"] == squatter]
    assert np.median([(box[0] + box[2]) / 2 for box in boxes]) < 960
