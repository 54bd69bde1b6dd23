"""The keypoint trainer: targets the pipeline's decoder reads back, crops cut as the keypoints
stage cuts them, flip pairs, settings and data errors, and a tiny real training run
(pseudo-labelled shared images, a few dozen steps) with resume, logs and curves."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from conftest import MEDIA, MODELS, REPO
from streampose.frame import COCO_KEYPOINTS
from streampose.vision import heatmap, topdown

# trainers/ is a folder of the repository, not part of the installed package.
sys.path.insert(0, str(REPO))
from trainers.common.runlog import read_log  # noqa: E402
from trainers.common.yaml_config import ConfigError, load_yaml_config, parse_config  # noqa: E402
from trainers.keypoint.augment import random_affine  # noqa: E402
from trainers.keypoint.coco import DatasetError, load_coco_keypoints  # noqa: E402
from trainers.keypoint.config import COCO_FLIP_PAIRS, TrainConfig  # noqa: E402
from trainers.keypoint.data import ImageCache, TrainingSamples  # noqa: E402
from trainers.keypoint.make_dataset import make_dataset  # noqa: E402
from trainers.keypoint.targets import encode_heatmaps  # noqa: E402

NO_AUGMENT = {"flip": 0.0, "half_body": 0.0, "scale": 0.0, "rotate_prob": 0.0, "colour": 0.0}
SMALL_VIDEO = "fall_room_chair_320x240.mp4"
NIGHT_TRAIN_VIDEOS = ["fall_faint_studio_1280x720.mp4", "office_man_walking_1280x720.mp4",
                      "pushups_tutorial_pushup2.mp4"]
NIGHT_VAL_VIDEO = "squat_side_view.mp4"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Pseudo-labels from the shared TinyPose 256x192 (the default labeller, the teacher of the
    128x96 student below) through the pipeline's stages: the still images for training, a few
    frames of one small video held out."""
    out = tmp_path_factory.mktemp("pseudo")
    record = make_dataset(out, MEDIA, [MODELS], videos=[SMALL_VIDEO], val_videos=(SMALL_VIDEO,), every_s=2.0)
    assert yaml.safe_load((out / "dataset.yml").read_text())["labeller"] == "tinypose_256x192_ov (flip test)"
    assert record["counts"]["train"]["persons"] >= 10 and record["counts"]["val"]["persons"] >= 3, record
    return out


def settings(dataset: Path, **overrides) -> TrainConfig:
    data = {"train_annotations": str(dataset / "train.json"), "train_images": str(dataset / "images"),
            "val_annotations": str(dataset / "val.json"), "val_images": str(dataset / "images")}
    return parse_config(TrainConfig, {"data": data, **overrides}, "test settings")


# ----------------------------------------------------------------- targets and the crop convention

@pytest.mark.parametrize("size, sigma", [((24, 32), 1.0), ((48, 64), 2.0)])
def test_an_encoded_joint_decodes_back_within_a_tenth_of_a_pixel(size, sigma):
    rng = np.random.default_rng(1)
    width, height = size
    points = rng.uniform([2, 2], [width - 3, height - 3], (50, 17, 2))
    maps, weights = encode_heatmaps(points, np.ones((50, 17), bool), size, sigma)
    assert maps.shape == (50, 17, height, width) and (weights == 1).all()
    decoded, confidence = heatmap.decode_heatmaps(maps, use_dark=True)
    assert np.abs(decoded - points).max() < 0.1
    assert (confidence > 0.6).all()


def test_joints_that_are_unlabelled_or_far_off_the_map_get_no_weight_and_an_empty_map():
    points = np.array([[[5.0, 5.0], [5.0, 5.0], [-4.0, 5.0], [30.0, 40.0]]])
    labelled = np.array([[True, False, True, True]])
    maps, weights = encode_heatmaps(points, labelled, (24, 32), 1.0)
    assert weights.tolist() == [[1, 0, 0, 0]]
    assert maps[0, 0].max() == pytest.approx(1.0) and not maps[0, 1:].any()


def test_an_unaugmented_training_crop_is_the_keypoints_stages_crop(dataset):
    from trainers.keypoint.evaluate import folder_estimator

    config = settings(dataset, augment=NO_AUGMENT)
    samples = TrainingSamples(load_coco_keypoints(config.data.train_annotations, config.data.train_images,
                                                  config.keypoints.names), config)
    index = 0
    box, joints = samples.samples.boxes[index], samples.samples.keypoints[index]
    image = ImageCache(1).get(samples.samples.image_files[samples.samples.image_index[index]])
    # The stage's own crop and normalisation: its PoseEstimator on the released model of this input size.
    estimator = folder_estimator(MODELS / "tinypose_128x96_ov", config.data.expand_ratio)
    try:
        stage_input, center, scale = estimator.network_input([image], np.zeros(1, int), box[None])
    finally:
        estimator.engine.close()
    matrix, flipped = random_affine(box, joints, config.input_size, config.data.expand_ratio, config.augment,
                                    config.keypoints, np.random.default_rng(0))
    assert not flipped and np.array_equal(matrix, topdown.affine_matrices(center, scale, estimator.input_size)[0])
    tensor, maps, weights = samples[index]
    assert np.array_equal(tensor, stage_input[0])
    # The targets, decoded and mapped back as the stage maps heatmap peaks, land on the labels.
    peaks, _ = heatmap.decode_heatmaps(maps[None], use_dark=True)
    back = topdown.apply_affine(peaks, topdown.affine_matrices(center, scale, (24, 32), inverse=True))[0]
    inside = (weights > 0) & (peaks[0, :, 0] >= 2) & (peaks[0, :, 0] <= 21) & (peaks[0, :, 1] >= 2) & \
        (peaks[0, :, 1] <= 29)
    assert inside.sum() >= 5
    frame_pixels_per_heatmap_pixel = scale[0, 0] * topdown.PIXEL_STD / 24
    assert np.abs(back[inside] - joints[inside, :2]).max() < 0.1 * frame_pixels_per_heatmap_pixel


def test_a_mirrored_crop_swaps_left_and_right_and_mirrors_the_image_about_its_centre(dataset):
    plain = TrainingSamples(_train_set(dataset), settings(dataset, augment=NO_AUGMENT))
    mirrored = TrainingSamples(plain.samples, settings(dataset, augment={**NO_AUGMENT, "flip": 1.0}))
    index = int(np.argmax((plain.samples.keypoints[:, :, 2] > 0).sum(axis=1)))
    image, maps, weights = plain[index]
    flipped_image, flipped_maps, flipped_weights = mirrored[index]
    order = heatmap.flip_order(17, COCO_FLIP_PAIRS)
    assert order[5] == 6 and order[6] == 5 and order[0] == 0
    assert np.array_equal(flipped_weights, weights[order])
    # Crop column c of the mirror samples the frame where column W - c of the plain crop does.
    assert np.abs(flipped_image[:, :, 1:] - image[:, :, :0:-1]).max() < 0.02
    peaks, _ = heatmap.decode_heatmaps(maps[None])
    flipped_peaks, _ = heatmap.decode_heatmaps(flipped_maps[None])
    usable = (weights > 0) & (peaks[0, :, 0] > 2) & (peaks[0, :, 0] < 21) & (peaks[0, :, 1] > 2) & (peaks[0, :, 1] < 29)
    expected = np.stack([24 - peaks[0, order, 0], peaks[0, order, 1]], axis=-1)
    assert usable[order].sum() >= 5
    assert np.abs(flipped_peaks[0][usable[order]] - expected[usable[order]]).max() < 0.1


def test_augmented_crops_keep_joints_and_image_together(dataset):
    """Rotation, zoom, half-body and flip move image and joints by one matrix: the label of a
    joint sits where the network input shows it, checked through the un-augmented crop."""
    config = settings(dataset, augment={"flip": 0.5, "half_body": 0.5, "scale": 0.3, "rotate_prob": 1.0,
                                        "rotate_deg": 40.0, "colour": 0.0})
    samples = TrainingSamples(_train_set(dataset), config)
    rng = np.random.default_rng(3)
    for index in rng.choice(len(samples), 5, replace=False):
        box, joints = samples.samples.boxes[index], samples.samples.keypoints[index]
        matrix, flipped = random_affine(box, joints, config.input_size, 0.3, config.augment, config.keypoints,
                                        np.random.default_rng([config.schedule.seed, 0, index]))
        _, maps, weights = samples[index]
        order = heatmap.flip_order(17, COCO_FLIP_PAIRS) if flipped else np.arange(17)
        expected = topdown.apply_affine(joints[None, order, :2], matrix[None])[0] / 4
        peaks, _ = heatmap.decode_heatmaps(maps[None])
        usable = (weights > 0) & (expected[:, 0] > 2) & (expected[:, 0] < 21) & (expected[:, 1] > 2) & \
            (expected[:, 1] < 29)
        assert np.abs(peaks[0][usable] - expected[usable]).max() < 0.1


def _train_set(dataset: Path):
    return load_coco_keypoints(dataset / "train.json", dataset / "images", COCO_KEYPOINTS)


# ----------------------------------------------------------------- settings and data errors

def test_settings_errors_name_the_file_and_key(tmp_path, dataset):
    good = {"data": {"train_annotations": "a.json", "train_images": ".", "val_annotations": "b.json",
                     "val_images": "."}}
    path = tmp_path / "settings.yml"
    for change, key in (({"schedule": {"epochz": 3}}, "schedule.epochz"),
                        ({"schedule": {"epochs": "many"}}, "schedule.epochs"),
                        ({"model": {"arch": "hrnet_w48"}}, "model.arch"),
                        ({"input_size": [96]}, "input_size")):
        path.write_text(yaml.safe_dump({**good, **change}))
        with pytest.raises(ConfigError, match=f"{path}: key '{key}'"):
            load_yaml_config(TrainConfig, path)
    path.write_text(yaml.safe_dump({**good, "heatmap_size": [48, 64]}))
    with pytest.raises(ConfigError, match=r"heatmap_size \[48, 64\] must be input_size \[96, 128\] / 4"):
        load_yaml_config(TrainConfig, path)
    path.write_text(yaml.safe_dump({**good, "keypoints": {"names": ["a", "b", "c"], "flip_pairs": [[1, 3]],
                                                          "sigmas": [0.1] * 3, "joint_weights": [1.0] * 3,
                                                          "upper_body": [0]}}))
    with pytest.raises(ConfigError, match=r"flip_pairs: \[1, 3\] is not a pair of distinct joints in 0..2"):
        load_yaml_config(TrainConfig, path)
    three_joints = {"names": ["a", "b", "c"], "flip_pairs": [[0, 1]], "sigmas": [0.1] * 3, "joint_weights": [1.0] * 3,
                    "upper_body": [0]}
    path.write_text(yaml.safe_dump({**good, "keypoints": three_joints}))
    assert load_yaml_config(TrainConfig, path).keypoints.num_joints == 3
    path.write_text(yaml.safe_dump({**good, "keypoints": three_joints, "flip_test": True}))
    with pytest.raises(ConfigError, match="flip_test: the keypoints stage mirrors crops with the COCO joints"):
        load_yaml_config(TrainConfig, path)
    path.write_text(yaml.safe_dump(good))
    config = load_yaml_config(TrainConfig, path, ["schedule.epochs=7", "augment.flip=0"])
    assert config.schedule.epochs == 7 and config.augment.flip == 0.0
    assert config.data.train_annotations == tmp_path / "a.json"  # relative to the settings file


@pytest.mark.parametrize("path", sorted((REPO / "trainers" / "keypoint" / "configs").glob("*.yml")),
                         ids=lambda path: path.name)
def test_every_shipped_keypoint_config_is_valid(path):
    config = load_yaml_config(TrainConfig, path)
    if config.model.init is not None:
        assert config.model.init.is_file(), f"{path.name}: model.init {config.model.init} does not exist"

def test_a_custom_keypoint_set_is_checked_against_the_annotations(tmp_path, dataset):
    data = json.loads((dataset / "train.json").read_text())
    with pytest.raises(DatasetError, match="lists 17 keypoints .* the settings 5"):
        load_coco_keypoints(dataset / "train.json", dataset / "images", ("a", "b", "c", "d", "e"))
    data["images"][0]["file_name"] = "missing.jpg"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"missing\.jpg does not exist"):
        load_coco_keypoints(broken, dataset / "images", COCO_KEYPOINTS)


# ----------------------------------------------------------------- a real (tiny) training run

def test_fine_tuning_tinypose_lowers_the_loss_logs_checkpoints_and_resumes(tmp_path, dataset):
    """PP-TinyPose with the released weights (imported from the shared IR), fine-tuned for a
    dozen steps on the pseudo-labelled images: the loss on the (un-augmented) training persons
    falls; the run logs, evaluates, checkpoints, draws its curves, refuses to overwrite itself
    and resumes where it stopped."""
    import paddle

    from trainers.common.checkpoint import build_from_checkpoint, load_checkpoint
    from trainers.keypoint.import_ir import load_ir_weights
    from trainers.keypoint.models import build_network
    from trainers.keypoint.train import heatmap_loss, train

    overrides = {"model": {"arch": "tinypose", "init": str(MODELS / "tinypose_128x96_ov" / "model.xml"),
                           "freeze_norm": True},
                 "augment": NO_AUGMENT,
                 "schedule": {"epochs": 100, "batch_size": 4, "base_lr": 5e-5, "warmup_steps": 2, "max_steps": 12,
                              "eval_every": 100, "log_every": 2, "ema_decay": 0.5}}
    config = settings(dataset, **overrides)
    samples = TrainingSamples(_train_set(dataset), config)
    columns = zip(*(samples[i] for i in range(len(samples))))
    images, maps, weights = (paddle.to_tensor(np.stack(column)) for column in columns)

    def training_set_loss(network) -> float:
        with paddle.no_grad():
            return float(heatmap_loss(network(images), maps, weights))

    released = build_network(**config.model.builder_kwargs(config.input_size, 17))
    load_ir_weights(released, config.model.init)
    run = tmp_path / "run"
    summary = train(config, run)
    tuned = build_from_checkpoint(load_checkpoint(run / "last.pdckpt"))
    assert training_set_loss(tuned) < 0.9 * training_set_loss(released)

    records = read_log(run / "log.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert all(math.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in records if r["kind"] == "train")
    evals = [r for r in records if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 12] and all(0.5 < e["AP"] <= 1 for e in evals)
    assert summary["steps"] == 12
    for name in ("config.yml", "last.pdckpt", "best.pdckpt", "metrics.yml", "curves.png"):
        assert (run / name).is_file(), name
    assert (run / "curves.png").stat().st_size > 10_000

    with pytest.raises(SystemExit, match="--resume"):
        train(config, run)
    longer = settings(dataset, **{**overrides, "schedule": {**overrides["schedule"], "max_steps": 16}})
    summary = train(longer, run, resume=True)
    steps = [r["step"] for r in read_log(run / "log.jsonl") if r["kind"] == "train"]
    assert summary["steps"] == 16 and steps[-3:] == [12, 14, 16]


def test_fine_tuning_tinypose_for_a_night_camera_raises_held_out_ap(tmp_path):
    """The released TinyPose 128x96 on frames as a night-time infrared camera shows them, labelled
    by the 256x192 teacher on the frames as captured: thirty steps of fine-tuning on three night
    videos raise OKS AP on a fourth, held-out one."""
    from trainers.keypoint.evaluate import evaluate, folder_estimator
    from trainers.keypoint.train import train

    night = tmp_path / "night"
    counts = make_dataset(night, MEDIA, [MODELS], videos=NIGHT_TRAIN_VIDEOS + [NIGHT_VAL_VIDEO],
                          val_videos=(NIGHT_VAL_VIDEO,), include_images=False, every_s=0.5, look="night")["counts"]
    assert counts["train"]["persons"] >= 40 and counts["val"]["persons"] >= 15, counts
    night_frame = cv2.imread(str(sorted((night / "images").glob("squat_side_view_*.jpg"))[0]))
    assert (night_frame[..., 0] == night_frame[..., 2]).all() and night_frame.mean() < 80  # grey and dim

    config = settings(night, model={"arch": "tinypose", "init": str(MODELS / "tinypose_128x96_ov" / "model.xml"),
                                    "freeze_norm": True},
                      schedule={"epochs": 100, "batch_size": 16, "base_lr": 5e-5, "warmup_steps": 5,
                                "max_steps": 30, "eval_every": 100, "log_every": 10})
    summary = train(config, tmp_path / "run")
    before, after = (r["AP"] for r in read_log(tmp_path / "run" / "log.jsonl") if r["kind"] == "eval")
    # The starting point is the released model itself: its IR, run by the pipeline's engine, scores the same.
    released = evaluate(folder_estimator(MODELS / "tinypose_128x96_ov", config.data.expand_ratio),
                        load_coco_keypoints(night / "val.json", night / "images", COCO_KEYPOINTS), config.keypoints.sigmas)
    assert released["AP"] == pytest.approx(before, abs=0.005)
    assert summary["best"]["AP"] == after  # the fine-tuned network, not the starting one, is kept
    assert after > before + 0.04, (before, after)


def test_a_fine_tune_that_never_beats_the_starting_network_keeps_it_as_best(tmp_path, dataset):
    """The starting network competes for best.pdckpt: a run that does not improve held-out AP
    (here: a learning rate of 1e-12) exports the network it started from."""
    from trainers.common.checkpoint import load_checkpoint
    from trainers.keypoint.train import train

    config = settings(dataset, model={"arch": "tinypose", "init": str(MODELS / "tinypose_128x96_ov" / "model.xml"),
                                      "freeze_norm": True},
                      augment=NO_AUGMENT,
                      schedule={"epochs": 100, "batch_size": 4, "base_lr": 1e-12, "warmup_steps": 1, "max_steps": 4,
                                "eval_every": 100, "log_every": 2})
    summary = train(config, tmp_path / "run")
    before, after = (r["AP"] for r in read_log(tmp_path / "run" / "log.jsonl") if r["kind"] == "eval")
    assert after == before and summary["steps"] == 4
    assert (summary["best"]["epoch"], summary["best"]["step"]) == (0, 0)
    assert load_checkpoint(tmp_path / "run" / "best.pdckpt")["step"] == 0


def test_the_train_command_exports_its_best_checkpoint(tmp_path, dataset, capfd):
    """`python -m trainers.keypoint.train SETTINGS --run-dir RUN --export DIR`: trains, then
    writes the model folders of best.pdckpt, which the pipeline's engines load."""
    from streampose.models.folder import load_model_folder
    from trainers.keypoint.train import main

    data = {"train_annotations": str(dataset / "train.json"), "train_images": str(dataset / "images"),
            "val_annotations": str(dataset / "val.json"), "val_images": str(dataset / "images")}
    model = {"arch": "simple_baseline", "backbone": "mobilenet_v2", "backbone_scale": 0.5, "deconv_channels": 32}
    path = tmp_path / "settings.yml"
    path.write_text(yaml.safe_dump({"data": data, "model": model, "augment": NO_AUGMENT}))
    out = tmp_path / "models" / "tiny"
    assert main([str(path), "--run-dir", str(tmp_path / "run"), "--set", "schedule.max_steps=2",
                 "--set", "schedule.batch_size=4", "--export", str(out)]) == 0
    printed = capfd.readouterr().out
    assert f"paddle: {out} " in printed and f"openvino: {out}_ov " in printed, printed
    assert load_model_folder(out).format == "paddle3" and load_model_folder(out.with_name("tiny_ov")).format == "openvino"
