"""The detector and keypoint stages on real models and real images.

Golden values (tests/golden/pose_images.json) were produced by this file with
STREAMPOSE_WRITE_GOLDEN=1 after checking the drawn result by eye
(`streampose infer` draws them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from conftest import IMAGES, MODELS, VIDEOS
from streampose.frame import COCO_KEYPOINTS, Frame, StreamEvent
from streampose.graph import schema
from streampose.runtime.stage import StageContext
from streampose.stages.detector import DetectorConfigError, DetectorStage
from streampose.stages.keypoints import KeypointConfigError, KeypointStage, boxes_from_keypoints

GOLDEN = Path(__file__).parent / "golden" / "pose_images.json"
GOLDEN_IMAGES = ("hrnet_demo.jpg", "four_people_walking_gy_demo_7.jpg", "coco_000000014439.jpg")
DETECTOR = "picodet_s_192_pedestrian"
KEYPOINTS = "tinypose_128x96_ov"
J = {name: i for i, name in enumerate(COCO_KEYPOINTS)}


def context(*model_paths: Path) -> StageContext:
    return StageContext(graph_dir=Path("."), output_dir=Path("."), model_paths=list(model_paths or [MODELS]))


def detector(model: str = DETECTOR, paths: tuple[Path, ...] = (), **params) -> DetectorStage:
    spec = schema.Detector(id="detector", type="detector", model=model, **params)
    return DetectorStage("detector", spec, context(*paths))


def keypoint_stage(model: str = KEYPOINTS, paths: tuple[Path, ...] = (), **params) -> KeypointStage:
    spec = schema.Keypoints(id="keypoints", type="keypoints", model=model, **params)
    return KeypointStage("keypoints", spec, context(*paths))


def frame(name: str, stream: str = "s", index: int = 0) -> Frame:
    image = cv2.imread(str(IMAGES / name))
    assert image is not None, IMAGES / name
    return Frame(stream=stream, index=index, image=image, capture_time=0.0, media_time=0.0)


@pytest.fixture(scope="module")
def stages():
    det, kp = detector(batch={"max_size": 4}), keypoint_stage()
    yield det, kp
    det.close()
    kp.close()


def run(stages, *frames: Frame) -> list[Frame]:
    det, kp = stages
    det.run(list(frames))
    kp.run(list(frames))
    return list(frames)


# ----------------------------------------------------------------- what the models find

def test_one_person_facing_the_camera_has_an_anatomically_consistent_pose(stages):
    (result,) = run(stages, frame("hrnet_demo.jpg"))
    persons = result.persons
    assert len(persons) == 1
    kp = persons.keypoints[0]
    assert kp.shape == (17, 3) and (kp[:, 2] > 0.3).all()
    y = kp[:, 1]
    for upper, lower in (("shoulder", "hip"), ("hip", "knee"), ("knee", "ankle")):
        for side in ("left", "right"):
            assert y[J[f"{side}_{upper}"]] < y[J[f"{side}_{lower}"]], (side, upper, lower)
    assert y[J["nose"]] < min(y[J["left_shoulder"]], y[J["right_shoulder"]])
    # Facing the camera: the person's left side is on the image's right.
    x = kp[:, 0]
    for part in ("shoulder", "elbow", "wrist", "hip", "ear"):
        assert x[J[f"left_{part}"]] > x[J[f"right_{part}"]], part
    box = persons.boxes[0]
    assert (kp[:, 0] > box[0] - 10).all() and (kp[:, 0] < box[2] + 10).all()
    assert (kp[:, 1] > box[1] - 10).all() and (kp[:, 1] < box[3] + 10).all()
    assert persons.pose_scores[0] == pytest.approx(kp[:, 2].mean())


def test_four_people_walking_are_four_persons_with_confident_poses(stages):
    (result,) = run(stages, frame("four_people_walking_gy_demo_7.jpg"))
    persons = result.persons
    assert len(persons) == 4
    assert persons.keypoints.shape == (4, 17, 3)
    assert (persons.pose_scores > 0.5).all()
    # Side by side: their boxes' centres are spread across the image, and their hips lie in their boxes.
    centres = (persons.boxes[:, 0] + persons.boxes[:, 2]) / 2
    assert np.diff(np.sort(centres)).min() > 30
    hips = persons.keypoints[:, [J["left_hip"], J["right_hip"]], :2].mean(axis=1)
    assert ((hips[:, 0] > persons.boxes[:, 0]) & (hips[:, 0] < persons.boxes[:, 2])).all()


@pytest.mark.parametrize("model", ["picodet_s_192_lcnet_pedestrian_ov", "picodet_s_320_lcnet_pedestrian_ov",
                                   "yolox_nano_coco_onnx"])
def test_every_detector_form_finds_the_people(model):
    """PicoDet post-processed without NMS (two sizes) and YOLOX; the raw-head form is above."""
    det = detector(model)
    counts = {}
    for name in ("hrnet_demo.jpg", "four_people_walking_gy_demo_7.jpg"):
        found = frame(name)
        det.run([found])
        counts[name] = int((found.persons.scores > 0.5).sum())
        assert (found.persons.boxes[:, 2:] > found.persons.boxes[:, :2]).all()
        assert (found.persons.boxes >= 0).all()
        assert (found.persons.boxes[:, [2, 3]] <= [found.width, found.height]).all()
    assert counts == {"hrnet_demo.jpg": 1, "four_people_walking_gy_demo_7.jpg": 4}
    det.close()


def test_frame_without_people_gets_empty_keypoints(stages):
    sky = frame("coco_000000570688.jpg")
    sky.image = np.ascontiguousarray(sky.image[:250])  # kites and sky only
    (result,) = run(stages, sky)
    assert len(result.persons) == 0
    assert result.persons.keypoints.shape == (0, 17, 3)
    assert result.persons.pose_scores.shape == (0,)


def golden_record(result: Frame) -> dict:
    p = result.persons
    return {"boxes": np.round(p.boxes.astype(float), 2).tolist(),
            "scores": np.round(p.scores.astype(float), 4).tolist(),
            "keypoints": np.round(p.keypoints.astype(float), 2).tolist()}


def test_golden_boxes_and_keypoints(stages):
    results = {name: golden_record(run(stages, frame(name))[0]) for name in GOLDEN_IMAGES}
    if os.environ.get("STREAMPOSE_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"detector": DETECTOR, "keypoints": KEYPOINTS, "images": results}))
    golden = json.loads(GOLDEN.read_text())["images"]
    for name in GOLDEN_IMAGES:
        got, want = results[name], golden[name]
        assert len(got["boxes"]) == len(want["boxes"]), name
        np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1.0, err_msg=name)
        np.testing.assert_allclose(got["scores"], want["scores"], atol=0.01, err_msg=name)
        got_kp, want_kp = np.array(got["keypoints"]), np.array(want["keypoints"])
        np.testing.assert_allclose(got_kp[..., 2], want_kp[..., 2], atol=0.03, err_msg=name)
        confident = want_kp[..., 2] > 0.5
        np.testing.assert_allclose(got_kp[confident][:, :2], want_kp[confident][:, :2], atol=1.5, err_msg=name)


# ----------------------------------------------------------------- engines and batching

def test_openvino_and_paddle_engines_give_the_same_boxes_and_keypoints(stages):
    paddle = detector(engine="paddle")
    _, kp = stages
    for name in ("four_people_walking_gy_demo_7.jpg", "hrnet_demo.jpg"):
        ov_frame, pd_frame = frame(name), frame(name)
        stages[0].run([ov_frame])
        paddle.run([pd_frame])
        kp.run([ov_frame])
        kp.run([pd_frame])
        assert len(ov_frame.persons) == len(pd_frame.persons) > 0
        np.testing.assert_allclose(ov_frame.persons.boxes, pd_frame.persons.boxes, atol=0.5)
        np.testing.assert_allclose(ov_frame.persons.scores, pd_frame.persons.scores, atol=1e-3)
        np.testing.assert_allclose(ov_frame.persons.keypoints, pd_frame.persons.keypoints, atol=0.5)
    paddle.close()


def test_a_batch_of_frames_and_crops_equals_single_runs(stages):
    names = ("four_people_walking_gy_demo_7.jpg", "hrnet_demo.jpg", "coco_000000014439.jpg")
    batched = run(stages, *(frame(n, stream=n) for n in names))
    for name, together in zip(names, batched):
        (alone,) = run(stages, frame(name, stream=name))
        np.testing.assert_allclose(together.persons.boxes, alone.persons.boxes, atol=1e-3)
        np.testing.assert_allclose(together.persons.keypoints, alone.persons.keypoints, atol=1e-2)
    # Person by person through the estimator: 18 crops in one call (16 + 2) against 18 calls of one.
    crowd = batched[2]
    estimator = stages[1].estimator
    index = np.zeros(len(crowd.persons), int)
    together, _ = estimator.estimate([crowd.image], index, crowd.persons.boxes)
    for i, box in enumerate(crowd.persons.boxes):
        alone, _ = estimator.estimate([crowd.image], index[:1], box[None])
        np.testing.assert_allclose(together[i], alone[0], atol=1e-2)


def test_yolox_finds_the_same_people_as_picodet(stages):
    yolo = detector("yolox_nano_coco_onnx")
    (picked,) = run(stages, frame("four_people_walking_gy_demo_7.jpg"))
    found = frame("four_people_walking_gy_demo_7.jpg")
    yolo.run([found])
    confident = found.persons.boxes[found.persons.scores > 0.5]
    assert len(confident) == 4
    for box in picked.persons.boxes:
        low = np.maximum(confident[:, :2], box[:2])
        high = np.minimum(confident[:, 2:], box[2:])
        overlap = np.clip(high - low, 0, None).prod(axis=1)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        # Boxes differ in how much of an outstretched arm they take in.
        assert (overlap / (area(confident) + area(box) - overlap)).max() > 0.5
    yolo.close()


def test_flip_test_averages_both_views(stages):
    flipped = keypoint_stage(flip_test=True)
    (plain,) = run(stages, frame("four_people_walking_gy_demo_7.jpg"))
    both = frame("four_people_walking_gy_demo_7.jpg")
    both.persons = plain.persons.select(np.arange(len(plain.persons)))
    flipped.run([both])
    confident = plain.persons.keypoints[..., 2] > 0.5
    shift = np.abs(both.persons.keypoints[..., :2] - plain.persons.keypoints[..., :2])[confident]
    assert 0 < shift.max() < 8 and np.median(shift) < 2
    flipped.close()


# ----------------------------------------------------------------- selection and every_n_frames

def test_low_score_and_surplus_persons_get_no_keypoints():
    kp = keypoint_stage(min_box_score=0.5, max_persons=3)
    det = detector()
    result = frame("coco_000000014439.jpg")
    det.run([result])
    kp.run([result])
    persons = result.persons
    given = persons.pose_scores > 0
    assert given.sum() == 3
    assert (persons.scores[given] >= 0.5).all()
    area = (persons.boxes[:, 2] - persons.boxes[:, 0]) * (persons.boxes[:, 3] - persons.boxes[:, 1])
    eligible = persons.scores >= 0.5
    assert area[given].min() >= area[eligible & ~given].max()
    assert (persons.keypoints[~given] == 0).all()
    det.close()
    kp.close()


def video_frames(name: str, start: int, count: int) -> list[Frame]:
    """Frames start..start+count-1 of a shared video, as a source would number them."""
    with av.open(str(VIDEOS / name)) as container:
        images = [f.to_ndarray(format="bgr24") for _, f in zip(range(start + count), container.decode(video=0))]
    return [Frame(stream="cam", index=start + i, image=image, capture_time=0.0, media_time=0.0)
            for i, image in enumerate(images[start:])]


def test_every_n_frames_carries_boxes_from_keypoints_between_detections(stages):
    _, kp = stages
    det = detector(every_n_frames=3)
    # The man walks across the room 1.5-1.7 s in.
    frames = video_frames("office_man_walking_1280x720.mp4", 45, 6)
    reference = video_frames("office_man_walking_1280x720.mp4", 45, 6)  # every frame detected
    stages[0].run(reference)
    # The detector runs ahead of the keypoint stage, as with frames in flight, and the keypoint
    # stage gets them in one batch: each carried frame still gets its previous frame's keypoints.
    for f in frames[:5]:
        det.run([f])
    assert [f.detected for f in frames[:5]] == [True, False, False, True, False]
    kp.run(frames[:5])
    assert len(frames[0].persons) >= 1
    for i in (1, 2, 4):   # carried over; frames 0 and 3 were detected
        carried, detected = frames[i].persons, reference[i].persons
        assert len(carried) == len(frames[i - 1].persons)
        expected = boxes_from_keypoints(frames[i - 1].persons, frames[i].width, frames[i].height).boxes
        np.testing.assert_array_equal(carried.boxes, expected)
        best = carried.boxes[np.argmax(carried.scores)]
        main = detected.boxes[np.argmax(detected.scores)]
        low, high = np.maximum(best[:2], main[:2]), np.minimum(best[2:], main[2:])
        overlap = np.prod(np.clip(high - low, 0, None))
        union = np.prod(best[2:] - best[:2]) + np.prod(main[2:] - main[:2]) - overlap
        assert overlap / union > 0.6, i
    np.testing.assert_allclose(frames[3].persons.boxes, reference[3].persons.boxes, atol=1e-3)
    # A gap in the stream forgets the memory: the next frame is detected.
    det.stream_event(StreamEvent(stream="cam", kind="lost", segment=1))
    again, control = frames[5], reference[5]
    det.run([again])
    np.testing.assert_allclose(again.persons.boxes, control.persons.boxes, atol=1e-3)
    det.close()


# ----------------------------------------------------------------- bad models and configs

def test_wrong_kind_of_model_is_a_clear_error():
    with pytest.raises(DetectorConfigError, match="tinypose_128x96_ov is a keypoints model"):
        detector(KEYPOINTS)
    with pytest.raises(KeypointConfigError, match="picodet_s_192_lcnet_pedestrian_ov is a detector model"):
        keypoint_stage("picodet_s_192_lcnet_pedestrian_ov")


def model_with_config(tmp_path: Path, model: str, edit) -> Path:
    """A model folder under tmp_path linking to `model`'s network, with an edited infer_cfg.yml."""
    import yaml
    source = MODELS / model
    folder = tmp_path / f"{model}_edited"
    folder.mkdir()
    for network_file in source.iterdir():
        if network_file.name != "infer_cfg.yml":
            (folder / network_file.name).symlink_to(network_file)
    config = yaml.safe_load((source / "infer_cfg.yml").read_text())
    edit(config)
    (folder / "infer_cfg.yml").write_text(yaml.safe_dump(config))
    return folder


def test_input_size_mismatch_is_a_clear_error(tmp_path):
    def wider_crop(config):
        config["Preprocess"][0]["trainsize"] = [128, 160]

    def bigger_resize(config):
        config["Preprocess"][0]["target_size"] = [320, 320]

    crop_model = model_with_config(tmp_path, KEYPOINTS, wider_crop)
    with pytest.raises(KeypointConfigError, match=r"trainsize is 128x160 .* network input is 96x128"):
        keypoint_stage(str(crop_model))
    resize_model = model_with_config(tmp_path, "picodet_s_192_lcnet_pedestrian_ov", bigger_resize)
    with pytest.raises(DetectorConfigError, match=r"pre-processes to 320x320 .* network input is 192x192"):
        detector(str(resize_model))
