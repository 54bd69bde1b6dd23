"""Pose without a detector (streampose.posenets, the `pose` stage) on the real networks and media.

References are not hard-coded: each network is compared with the top-down path (PicoDet +
TinyPose-256x192) run here on the same pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from conftest import IMAGES, MODELS, VIDEOS, first_frames
from streampose.frame import COCO_KEYPOINTS, Frame, StreamEvent
from streampose.graph import schema
from streampose.graph.loader import load_graph
from streampose.posenets import layouts, movenet, paf
from streampose.runtime.pipeline import Pipeline
from streampose.runtime.stage import StageContext
from streampose.stages.detector import DetectorStage
from streampose.stages.keypoints import KeypointStage
from streampose.stages.pose import PoseStage

J = {name: i for i, name in enumerate(COCO_KEYPOINTS)}
MODEL = {"openpose": "human_pose_estimation_0001_int8_ov", "movenet": "movenet_singlepose_lightning_int8_tflite",
         "blazepose": "blazepose_lite_tflite"}
SQUAT = VIDEOS / "squat_side_view.mp4"


def context() -> StageContext:
    return StageContext(graph_dir=Path("."), output_dir=Path("."), model_paths=[MODELS], streams=["s"])


def pose_stage(network: str, **params) -> PoseStage:
    return PoseStage("pose", schema.Pose(id="pose", type="pose", network=network, model=MODEL[network], **params),
                     context())


def frame(image: np.ndarray, index: int = 0, stream: str = "s") -> Frame:
    return Frame(stream=stream, index=index, image=image, capture_time=0.0, media_time=index / 30)


@pytest.fixture(scope="module")
def top_down():
    """PicoDet-S-320 + TinyPose-256x192: the reference poses."""
    det = DetectorStage("d", schema.Detector(id="d", type="detector", model="picodet_s_320_lcnet_pedestrian_ov"),
                        context())
    kp = KeypointStage("k", schema.Keypoints(id="k", type="keypoints", model="tinypose_256x192_ov"), context())

    def run(image: np.ndarray) -> np.ndarray:
        f = frame(image)
        det.run([f])
        kp.run([f])
        return f.persons.keypoints
    yield run
    det.close()
    kp.close()


def agreement(found: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """How many persons of `reference` (R, 17, 3) a person of `found` (F, 17, 3) matches (the
    nearest by torso centre, whose joints confident in both lie a median under half the
    reference's torso length away), and the share of those joints within half a torso: a coarse
    same-person check (the measured agreement is in docs/models.md)."""
    def centre(k):
        return (k[:, J["left_hip"], :2] + k[:, J["right_hip"], :2] + k[:, J["left_shoulder"], :2]
                + k[:, J["right_shoulder"], :2]) / 4
    matched, hits, total = 0, 0, 0
    for person in reference:
        torso = np.linalg.norm((person[5, :2] + person[6, :2]) / 2 - (person[11, :2] + person[12, :2]) / 2)
        if not len(found):
            continue
        nearest = found[np.argmin(np.linalg.norm(centre(found) - centre(person[None]), axis=1))]
        both = (person[:, 2] > 0.5) & (nearest[:, 2] > 0.3)
        error = np.linalg.norm(nearest[both, :2] - person[both, :2], axis=1)
        if both.sum() >= 6 and np.median(error) < 0.5 * torso:
            matched += 1
        hits += int((error < 0.5 * torso).sum())
        total += int(both.sum())
    return matched, hits / max(total, 1)


# --------------------------------------------------------------------------- layouts

def test_layout_conversion_takes_every_coco_joint_by_name_and_zeroes_missing_ones():
    names = layouts.OPENPOSE_18
    keypoints = np.arange(len(names), dtype=np.float32)[:, None].repeat(3, 1) + 1   # row i holds i + 1
    coco = layouts.to_coco(keypoints, names)
    assert coco.shape == (17, 3)
    for j, name in enumerate(COCO_KEYPOINTS):
        assert coco[j, 0] == names.index(name) + 1
    blaze = layouts.to_coco(np.ones((2, 39, 5), np.float32), layouts.BLAZEPOSE_33)
    assert blaze.shape == (2, 17, 5)
    partial = layouts.to_coco(np.ones((4, 3), np.float32), ("nose", "left_eye", "left_hip", "neck"))
    assert partial[:, 2].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]


# --------------------------------------------------------------------------- bottom-up grouping

def _synthetic_maps(people: list[dict[int, tuple[float, float]]], shape=(64, 96)):
    """Heatmaps (18, H, W) with a Gaussian at each joint and affinity fields (38, H, W) with the
    limb's unit vector along each limb, as a trained network would draw them."""
    skeleton = paf.OPENPOSE_SKELETON
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    heat = np.zeros((18, height, width), np.float32)
    fields = np.zeros((38, height, width), np.float32)
    for joints in people:
        for j, (x, y) in joints.items():
            heat[j] = np.maximum(heat[j], np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 2))
        for (a, b), (fx, fy) in zip(skeleton.limbs, skeleton.fields):
            if a in joints and b in joints:
                start, end = np.array(joints[a]), np.array(joints[b])
                unit = (end - start) / np.linalg.norm(end - start)
                along = (xs - start[0]) * unit[0] + (ys - start[1]) * unit[1]
                across = np.abs(-(xs - start[0]) * unit[1] + (ys - start[1]) * unit[0])
                on = (along >= 0) & (along <= np.linalg.norm(end - start)) & (across <= 1.5)
                fields[fx][on], fields[fy][on] = unit[0], unit[1]
    return heat, fields


def test_grouping_separates_two_people_standing_side_by_side():
    def person(cx):
        # nose, neck, shoulders, elbows, wrists, hips, knees, ankles (OpenPose indices)
        return {0: (cx, 8), 1: (cx, 14), 2: (cx - 6, 14), 3: (cx - 7, 22), 4: (cx - 7, 30), 5: (cx + 6, 14),
                6: (cx + 7, 22), 7: (cx + 7, 30), 8: (cx - 4, 32), 9: (cx - 4, 44), 10: (cx - 4, 56),
                11: (cx + 4, 32), 12: (cx + 4, 44), 13: (cx + 4, 56)}
    people = [person(25.0), person(65.0)]
    heat, fields = _synthetic_maps(people)
    keypoints, scores = paf.group(heat, fields, paf.OPENPOSE_SKELETON, paf.GroupingSettings())
    assert len(keypoints) == 2
    for truth in people:
        found = keypoints[np.argmin([abs(k[1, 0] - truth[1][0]) for k in keypoints])]
        for j, xy in truth.items():
            assert found[j, 2] > 0.9 and np.allclose(found[j, :2], xy), j   # every joint, the right person
        assert (found[14:, 2] == 0).all()   # no eyes or ears were drawn
    assert np.all(scores > 0.9)


# --------------------------------------------------------------------------- MoveNet cropping

def test_movenet_crop_centres_on_the_hips_and_falls_back_to_the_whole_image():
    width, height = 640, 480
    whole = movenet.whole_image(width, height)
    assert whole.tolist() == [0, -80, 640]        # a square padded above and below
    keypoints = np.zeros((17, 3), np.float32)
    keypoints[:, 2] = 0.1
    assert movenet.next_crop(keypoints, width, height).tolist() == whole.tolist()   # no torso seen
    keypoints[[5, 6, 11, 12], :] = [[300, 200, .9], [340, 200, .9], [305, 280, .9], [335, 280, .9]]
    keypoints[15] = [310, 420, 0.9]                                                  # an ankle
    x1, y1, side = movenet.next_crop(keypoints, width, height)
    assert (x1 + side / 2, y1 + side / 2) == (320, 280)                             # hip midpoint
    # The body reaches 140 px below the hips: 1.2 x 140 beats the torso's 1.9 x 80.
    assert side / 2 == pytest.approx(1.2 * 140)


# --------------------------------------------------------------------------- real networks

@pytest.mark.parametrize("image,people", [("four_people_walking_gy_demo_7.jpg", 4), ("hrnet_demo.jpg", 1)])
def test_openpose_finds_the_people_the_top_down_path_finds(top_down, image, people):
    picture = cv2.imread(str(IMAGES / image))
    reference = top_down(picture)
    assert len(reference) == people
    stage = pose_stage("openpose")
    f = frame(picture)
    stage.run([f])
    stage.close()
    persons = f.persons
    assert len(persons) == people
    assert persons.keypoints.shape == (people, 17, 3) and persons.pose_scores.shape == (people,)
    matched, pck = agreement(persons.keypoints, reference)
    assert matched == people and pck > 0.9
    # Boxes enclose each person's confident keypoints.
    for box, keypoints in zip(persons.boxes, persons.keypoints):
        seen = keypoints[keypoints[:, 2] > 0.3, :2]
        assert (seen >= box[:2] - 1).all() and (seen <= box[2:] + 1).all()


def test_movenet_follows_the_person_with_its_crop_and_agrees_with_top_down(top_down):
    stage = pose_stage("movenet")
    frames = first_frames(SQUAT, 60)
    matched = 0
    for i, (image, _) in enumerate(frames):
        f = frame(image, i)
        stage.run([f])
        assert len(f.persons) == 1
        if i % 10 == 0:
            matched += agreement(f.persons.keypoints, top_down(image))[0]
    # After the first frame the crop is around the person, much smaller than the frame.
    crop = stage.memory.peek("s").crop
    assert crop[2] < 0.9 * max(frames[0][0].shape[:2])
    assert matched == 6
    stage.stream_event(StreamEvent(stream="s", kind="lost", segment=0))
    assert stage.memory.peek("s") is None
    stage.close()


# --------------------------------------------------------------------------- graphs

GRAPH = """\
sources: [{{id: clip, uri: {video}}}]
stages:
  - {{id: pose, type: pose, network: {network}, model: {model}}}
  - {{id: track, type: tracker, algorithm: ocsort}}
  - {{id: smooth, type: smoother}}
  - {{id: falls, type: plugin, plugin: fall}}
  - {{id: reps, type: plugin, plugin: reps}}
  - {{id: lines, type: jsonl, path: "{{stream}}.jsonl"}}
  - {{id: record, type: recorder, inputs: [reps], path: "{{stream}}.mp4"}}
runtime: {{metrics: {{bind: null}}}}
"""


@pytest.mark.parametrize("network,video", [("openpose", "mmaction2_demo_skeleton_2persons.mp4"),
                                           ("movenet", "squat_side_view.mp4"),
                                           ("blazepose", "squat_side_view.mp4")])
def test_pose_stage_runs_in_a_graph_through_tracking_smoothing_plugins_and_the_recorder(tmp_path, network, video):
    path = tmp_path / "graph.yml"
    path.write_text(GRAPH.format(video=VIDEOS / video, network=network, model=MODEL[network]))
    pipeline = Pipeline(load_graph(path), model_paths=[MODELS], output_dir=tmp_path / "out")
    pipeline.start()
    assert pipeline.wait(300)
    with av.open(str(VIDEOS / video)) as container:
        total = container.streams.video[0].frames
    lines = [json.loads(line) for line in (tmp_path / "out" / "clip.jsonl").read_text().splitlines()]
    assert len(lines) == total and not any(m["failed_stages"] for m in lines)
    tracked = [p for m in lines for p in m["persons"]]
    assert len(tracked) > 0.8 * total
    assert all(p["track_id"] >= 1 and len(p["keypoints"]) == 17 for p in tracked)
    assert all("fall_score" in p["annotations"] for p in tracked)
    if network == "blazepose":
        assert all(p["kpts3d"] is not None for p in tracked)
    with av.open(str(tmp_path / "out" / "clip.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == total


# --------------------------------------------------------------------------- BlazePose

def test_blazepose_anchors_and_region_geometry():
    from streampose.posenets import blazepose
    anchors = blazepose.anchors()
    assert anchors.shape == (2254, 2) and anchors.min() > 0 and anchors.max() < 1   # the network's 2254 boxes
    # An upright body: no rotation, side 2.5 x hip-to-top; crop corners map back around the centre.
    region = blazepose.Region.from_points(np.array([100.0, 200.0]), np.array([100.0, 120.0]))
    assert region.rotation == pytest.approx(0) and region.side == pytest.approx(200)
    corners = np.array([[0, 0, 1], [256, 256, 1]]) @ region.to_frame(256).T
    assert np.allclose(corners, [[0, 100], [200, 300]])
    # Lying with the head to the right: the crop's up points right in the frame.
    lying = blazepose.Region.from_points(np.array([100.0, 200.0]), np.array([180.0, 200.0]))
    up = np.array([128, 0, 1]) @ lying.to_frame(256).T
    assert np.allclose(up, [200, 200])


def test_blazepose_keypoints_agree_with_top_down_and_its_3d_skeleton_is_a_person(top_down):
    from streampose.geometry.lifting import STATURE_RATIO, skeleton_length
    picture = cv2.imread(str(IMAGES / "hrnet_demo.jpg"))
    stage = pose_stage("blazepose")
    f = frame(picture)
    stage.run([f])
    stage.close()
    assert len(f.persons) == 1
    assert agreement(f.persons.keypoints, top_down(picture))[0] == 1
    joints = f.persons.kpts3d[0]
    assert joints[:, 3].min() > 0
    height = skeleton_length(joints[None, :, :3])[0] / STATURE_RATIO
    assert 1.4 < height < 2.1, height
    # Placed where it projects onto the 2D keypoints (60 degree field of view assumed).
    focal = picture.shape[1] / 2 / np.tan(np.radians(30))
    projected = joints[:, :2] / joints[:, 2:3] * focal + np.array(picture.shape[1::-1]) / 2
    error = np.linalg.norm(projected - f.persons.keypoints[0, :, :2], axis=1)
    assert np.median(error) < 0.05 * picture.shape[0]


def test_validate_knows_the_pose_stage_parameters_and_checks_its_folder(tmp_path):
    import subprocess
    import sys
    graph = tmp_path / "graph.yml"

    def validate(stage: str) -> subprocess.CompletedProcess:
        graph.write_text(f"sources: [{{id: a, uri: {SQUAT}}}]\nstages:\n  - {stage}\n")
        return subprocess.run([sys.executable, "-m", "streampose", "validate", str(graph), "--models", str(MODELS)],
                              capture_output=True, text=True, timeout=120)

    good = validate("{id: pose, type: pose, network: openpose, model: human_pose_estimation_0001_int8_ov}")
    assert good.returncode == 0, good.stderr
    typo = validate("{id: pose, type: pose, network: movenet, model: movenet_singlepose_lightning_int8_tflite, "
                    "folow: false}")
    assert typo.returncode != 0 and "unknown key 'folow' (did you mean 'follow'?)" in typo.stderr
    kind = validate("{id: pose, type: pose, network: mobilenet, model: movenet_singlepose_lightning_int8_tflite}")
    assert kind.returncode != 0 and "network" in kind.stderr and "movenet" in kind.stderr
    wrong = validate("{id: pose, type: pose, network: blazepose, model: movenet_singlepose_lightning_int8_tflite}")
    assert wrong.returncode != 0
    assert "stage 'pose': key 'model'" in wrong.stderr and "pose_detection.tflite" in wrong.stderr


def test_evaluate_falls_runs_with_a_pose_stage(tmp_path):
    import subprocess
    import sys
    clip = "fall_faint_studio_1280x720.mp4"
    result = subprocess.run([sys.executable, "-m", "streampose", "evaluate", "falls", "--pose", "movenet",
                             "--videos", str(VIDEOS), "--labels", str(VIDEOS.parent / "labels.yml"), "--models",
                             str(MODELS), "--clip", clip, "--no-plots", "-o", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    report = json.loads((tmp_path / "falls.json").read_text())
    assert result.returncode in (0, 1), result.stderr
    (only,) = report["clips"]
    with av.open(str(VIDEOS / clip)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert only["clip"] == clip and only["frames"] == frames


def test_a_network_of_another_kind_is_refused_naming_what_it_expected():
    from streampose.posenets.networks import PoseNetworkError
    with pytest.raises(PoseNetworkError, match="heatmap and 38 affinity-field channels|two outputs"):
        PoseStage("pose", schema.Pose(id="pose", type="pose", network="openpose", model="tinypose_128x96_ov"),
                  context())
