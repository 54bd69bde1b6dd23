"""The repetition counter on real human motion seen from every side: motion-capture clips
(../shared/mocap) filmed by virtual cameras all round the person, low and high, projected to
keypoints and counted by the plugin with `exercise: auto`.

The labelled videos show each exercise from one or two views; footage the project has not
seen films them from anywhere (squats from the front were counted 5 of 12 there, issue 15).
Mocap gives the same motion from ten views: the count must not depend on the view, and motion
that is no exercise (walking, running, jumping, dancing, basketball) must count nothing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import SHARED
from test_reps import frame_of, plugin_stage

from trainers.lifter.mocap import load_clip

MOCAP = SHARED / "mocap"
FPS = 30.0
STATURE_M = 1.75
# Yaw of the camera round the person (0: in front at the clip's start) and its height above
# the floor (1.0 m: a phone on a stand; 2.8 m: a ceiling camera looking down), 4 m away.
VIEWS = [(yaw, height) for yaw in (0, 45, 90, 135, 180) for height in (1.0, 2.8)]


def film(joints: np.ndarray, fps: float, yaw_deg: float, height_m: float, distance_m: float = 4.0) -> np.ndarray:
    """(F, 17, 3) keypoints in pixels (confidence 0.9) of mocap joints (F, 17, 3; Y up, skeleton
    lengths) resampled to FPS and seen by a 900-pixel-focal camera aimed at the person's mean hips,
    0.9 m above the floor; the image centre is (640, 360)."""
    points = joints[::max(round(fps / FPS), 1)] * STATURE_M / joints[:, 0, 1].max()
    hips = points[:, 11:13].mean(axis=1).mean(axis=0)
    yaw = math.radians(yaw_deg)
    camera = hips + [distance_m * math.sin(yaw), 0.0, distance_m * math.cos(yaw)]
    camera[1] = height_m
    forward = np.array([hips[0], 0.9, hips[2]]) - camera
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    relative = points - camera
    depth = relative @ forward
    x, y = 640 + 900 * (relative @ right) / depth, 360 - 900 * (relative @ up) / depth
    return np.stack([x, y, np.full_like(x, 0.9)], axis=-1).astype(np.float32)


def counts(tmp_path, keypoints: np.ndarray) -> dict[str, int]:
    """Repetitions the plugin (exercise auto) counts for one track, by exercise."""
    stage, counted = plugin_stage(tmp_path, exercise="auto"), {}
    for index, person in enumerate(keypoints):
        frame = frame_of(index / FPS, [(1, person)])
        stage.run([frame])
        for event in frame.events:
            if event.kind == "rep":
                counted[event.data["exercise"]] = counted.get(event.data["exercise"], 0) + 1
    return counted


def test_squats_count_the_same_from_every_view(tmp_path):
    # CMU subject 13, trial 29 ends with two slow, deep squats (31-38 s; hips from 0.72 down to
    # 0.23-0.25 of the skeleton above the floor and back); before them it bends over at the
    # waist three times with straight legs (16-23 s), which is no squat.
    clip = load_clip(MOCAP / "cmu_cgspeed_mb" / "CMU_13_29.bvh", MOCAP)
    squats = clip.joints[round(31 * clip.fps):]
    bends = clip.joints[round(16 * clip.fps):round(23 * clip.fps)]
    for yaw, height in VIEWS:
        assert counts(tmp_path, film(squats, clip.fps, yaw, height)) == {"squat": 2}, (yaw, height)
        assert counts(tmp_path, film(bends, clip.fps, yaw, height)) == {}, (yaw, height)


@pytest.mark.parametrize("name", ["002_01", "002_03", "002_04", "005_02", "006_14", "007_12"])
def test_motion_that_is_no_exercise_counts_nothing_from_any_view(tmp_path, name):
    # Walking, running, jumping, dancing, dribbling and shooting a basketball, a brisk walk.
    clip = load_clip(MOCAP / "cmu_iclone_cc" / f"{name}.bvh", MOCAP)
    for yaw, height in VIEWS:
        assert counts(tmp_path, film(clip.joints, clip.fps, yaw, height)) == {}, (yaw, height)
