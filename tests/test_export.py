"""The exporter: a checkpoint -> Paddle, OpenVINO IR and ONNX model folders that the pipeline's
engines load and that reproduce the training network; an exported PP-TinyPose in a running
graph; TensorRT's one-line refusal without a GPU build; NNCF INT8 on calibration crops cut by
calib/prepare_crops.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import paddle
import pytest
import yaml

from conftest import IMAGES, MEDIA, MODELS, REPO, VIDEOS
from streampose.engines import load_engine
from streampose.frame import Frame
from streampose.graph import schema
from streampose.graph.loader import load_graph
from streampose.models.folder import load_model_folder
from streampose.runtime.pipeline import Pipeline
from streampose.runtime.stage import StageContext
from streampose.stages.detector import DetectorStage

# trainers/ is a folder of the repository, not part of the installed package.
sys.path.insert(0, str(REPO))
from trainers.common.checkpoint import save_checkpoint  # noqa: E402
from trainers.common.export import TOLERANCE  # noqa: E402
from trainers.common.yaml_config import parse_config  # noqa: E402
from trainers.keypoint.config import TrainConfig  # noqa: E402
from trainers.keypoint.evaluate import folder_estimator  # noqa: E402
from trainers.keypoint.models import build_network  # noqa: E402
from trainers.keypoint.train import BUILDER  # noqa: E402

CLIP = VIDEOS / "fall_faint_studio_1280x720.mp4"  # 53 frames, one person
ENGINE_FOR = {"paddle3": "paddle", "openvino": "openvino", "onnx": "onnxruntime"}


def run_module(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def write_checkpoint(path: Path, network, kwargs: dict, ema: dict | None = None) -> Path:
    """A checkpoint as the keypoint trainer writes it, of an untrained (or imported) network."""
    data = {key: "unused" for key in ("train_annotations", "train_images", "val_annotations", "val_images")}
    infer_cfg = parse_config(TrainConfig, {"data": data}, "test").infer_cfg
    return save_checkpoint(path, {"builder": BUILDER, "builder_kwargs": kwargs, "inputs": {"image": [-1, 3, 128, 96]},
                                  "infer_cfg": infer_cfg, "config": {"note": "test"}, "metrics": {"AP": 0.5},
                                  "model": network.state_dict(), "ema": ema})


@pytest.fixture(scope="module")
def tinypose_export(tmp_path_factory) -> Path:
    """PP-TinyPose with the released weights (imported from the shared IR), exported."""
    from trainers.keypoint.import_ir import load_ir_weights

    tmp = tmp_path_factory.mktemp("tinypose")
    kwargs = {"arch": "tinypose", "input_size": [96, 128], "num_joints": 17}
    network = build_network(**kwargs)
    load_ir_weights(network, MODELS / "tinypose_128x96_ov" / "model.xml")
    write_checkpoint(tmp / "released.pdckpt", network, kwargs)
    result = run_module("-m", "trainers.export", "model", str(tmp / "released.pdckpt"), "--out", str(tmp / "tinypose"))
    assert result.returncode == 0, result.stderr[-3000:]
    # TinyPose up-samples to an explicit size, which paddle2onnx converts (a scale factor it cannot).
    assert (tmp / "tinypose_onnx" / "model.onnx").is_file(), result.stdout
    return tmp / "tinypose"


def test_every_exported_format_reproduces_the_training_network(tmp_path):
    kwargs = {"arch": "simple_baseline", "backbone": "mobilenet_v2", "backbone_scale": 0.5, "deconv_channels": 32,
              "input_size": [96, 128], "num_joints": 17}
    paddle.seed(3)
    network = build_network(**kwargs)
    # Non-trivial batch-norm statistics, as after training.
    network.train()
    with paddle.no_grad():
        network(paddle.randn([8, 3, 128, 96]) * 2 + 0.5)
    network.eval()
    write_checkpoint(tmp_path / "net.pdckpt", network, kwargs)

    result = run_module("-m", "trainers.export", "model", str(tmp_path / "net.pdckpt"), "--out", str(tmp_path / "net"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["paddle", "openvino", "onnx"], result.stdout

    probe = np.random.default_rng(0).standard_normal((3, 3, 128, 96)).astype(np.float32)
    with paddle.no_grad():
        expected = network(paddle.to_tensor(probe)).numpy()
    for fmt, suffix, files in (("paddle3", "", {"model.json", "model.pdiparams"}), ("openvino", "_ov", {"model.xml"}),
                               ("onnx", "_onnx", {"model.onnx"})):
        folder = load_model_folder(tmp_path / f"net{suffix}")
        assert folder.format == fmt and folder.config.arch == "HRNet"
        assert files <= {path.name for path in folder.path.iterdir()}, fmt
        assert folder.config.op("TopDownEvalAffine").params["trainsize"] == [96, 128]
        engine = load_engine(folder, engine=ENGINE_FOR[fmt], max_batch=4, fallback="stop")
        got = engine.run({engine.inputs[0].name: probe})
        heatmaps = next(v for v in got.values() if v.ndim == 4)
        assert heatmaps.shape == (3, 17, 32, 24)
        assert np.abs(heatmaps - expected).max() < TOLERANCE, fmt
        engine.close()
        assert yaml.safe_load((folder.path / "metrics.yml").read_text()) == {"AP": 0.5}


def test_the_weight_average_is_what_gets_exported(tmp_path):
    """The EMA blends weights with PaddleDetection's warm-up, lends them to the network only
    inside `applied`, and is what `export model` writes where the run kept one."""
    from trainers.common.ema import ModelEMA

    kwargs = {"arch": "simple_baseline", "backbone": "mobilenet_v2", "backbone_scale": 0.5, "deconv_channels": 32,
              "input_size": [96, 128], "num_joints": 17}
    paddle.seed(3)
    network = build_network(**kwargs)
    later = build_network(**kwargs)  # other random weights: where training has moved the network to
    for layer in (network, later):
        # Batch-norm statistics and a head of ordinary scale, so that outputs are far from zero.
        layer.train()
        with paddle.no_grad():
            for _ in range(20):  # running statistics move 10 % of the way per batch
                layer(paddle.randn([4, 3, 128, 96]) * 2 + 0.5)
        layer.final_conv.weight.set_value(paddle.randn(layer.final_conv.weight.shape) * 0.5)
        layer.eval()
    ema = ModelEMA(network, decay=0.99)
    ema.update(later)
    d = 2 / 11  # min(decay, (1 + n) / (10 + n)) after n = 1 update
    name = "final_conv.weight"
    blended = d * network.state_dict()[name].numpy() + (1 - d) * later.state_dict()[name].numpy()
    np.testing.assert_allclose(ema.shadow[name].numpy(), blended, rtol=1e-5, atol=1e-7)

    probe = np.random.default_rng(1).standard_normal((2, 3, 128, 96)).astype(np.float32)
    with paddle.no_grad():
        own = network(paddle.to_tensor(probe)).numpy()
        with ema.applied(network):
            averaged = network(paddle.to_tensor(probe)).numpy()
        np.testing.assert_array_equal(network(paddle.to_tensor(probe)).numpy(), own)  # its own weights are back
    assert np.abs(own).max() > 100 * TOLERANCE and np.abs(averaged - own).max() > 100 * TOLERANCE

    write_checkpoint(tmp_path / "net.pdckpt", network, kwargs, ema=ema.state_dict())
    result = run_module("-m", "trainers.export", "model", str(tmp_path / "net.pdckpt"), "--out", str(tmp_path / "net"),
                        "--formats", "openvino")
    assert result.returncode == 0, result.stderr[-3000:]
    engine = load_engine(load_model_folder(tmp_path / "net"), engine="paddle", max_batch=2, fallback="stop")
    exported = next(v for v in engine.run({engine.inputs[0].name: probe}).values() if v.ndim == 4)
    engine.close()
    assert np.abs(exported - averaged).max() < TOLERANCE

def test_an_export_of_a_checkpoint_that_is_not_one_fails_clearly(tmp_path):
    (tmp_path / "junk.pdckpt").write_bytes(b"not a checkpoint")
    result = run_module("-m", "trainers.export", "model", str(tmp_path / "junk.pdckpt"), "--out", str(tmp_path / "x"))
    assert result.returncode == 1 and "junk.pdckpt: cannot read it as a checkpoint" in result.stderr
    assert not (tmp_path / "x").exists()


def test_an_exported_tinypose_runs_in_a_graph_as_the_released_model_does(tmp_path, tinypose_export):
    def keypoints_from_graph(model: str, name: str) -> list[dict]:
        graph = tmp_path / f"{name}.yml"
        graph.write_text(textwrap.dedent(f"""\
            sources: [{{id: clip, uri: {CLIP}}}]
            stages:
              - {{id: detect, type: detector, model: picodet_s_192_lcnet_pedestrian_ov}}
              - {{id: pose, type: keypoints, model: {model}}}
              - {{id: log, type: jsonl, path: "{name}.jsonl"}}
            runtime: {{metrics: {{bind: null}}}}
            """))
        pipeline = Pipeline(load_graph(graph), model_paths=[MODELS], output_dir=tmp_path)
        pipeline.start()
        assert pipeline.wait(120)
        return [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]

    exported = keypoints_from_graph(str(tinypose_export), "exported")
    released = keypoints_from_graph("tinypose_128x96_ov", "released")
    assert len(exported) == len(released) == 53
    compared = 0
    for ours, theirs in zip(exported, released):
        assert len(ours["persons"]) == len(theirs["persons"])
        for a, b in zip(ours["persons"], theirs["persons"]):
            a, b = np.array(a["keypoints"]), np.array(b["keypoints"])
            assert a.shape == (17, 3)
            assert np.abs(a[:, :2] - b[:, :2]).max() < 1.0 and np.abs(a[:, 2] - b[:, 2]).max() < 0.02
            compared += 1
    assert compared >= 45


def test_tensorrt_engines_without_a_gpu_build_of_paddle_are_refused_in_one_line(tinypose_export):
    if paddle.is_compiled_with_cuda():
        pytest.skip("this paddle is a GPU build: engines would really be built")
    result = run_module("-m", "trainers.export", "tensorrt", str(tinypose_export), "--precision", "fp16", "int8")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [result.stdout.strip()]
    assert result.stdout.startswith("tensorrt: no engines built: this paddlepaddle") and "CPU build" in result.stdout


def test_calibration_crops_from_a_coco_file_are_the_keypoints_stages_crops(tmp_path):
    """prepare_crops.py --coco: every non-crowd annotated box, cut as the keypoints stage cuts it."""
    from streampose.vision import topdown

    image = cv2.imread(str(IMAGES / "hrnet_demo.jpg"))
    boxes = [[40.0, 30.0, 120.0, 200.0], [150.0, 20.0, 60.0, 180.0]]   # COCO x, y, w, h
    coco = {"images": [{"id": 1, "file_name": "hrnet_demo.jpg", "width": image.shape[1], "height": image.shape[0]}],
            "annotations": [{"id": i + 1, "image_id": 1, "bbox": box, "iscrowd": 0} for i, box in enumerate(boxes)]
            + [{"id": 9, "image_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1}],
            "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "train.json").write_text(json.dumps(coco))
    result = run_module("calib/prepare_crops.py", "--coco", str(tmp_path / "train.json"), "--images", str(IMAGES),
                        "--out", str(tmp_path / "crops"), "--count", "10")
    assert result.returncode == 0, result.stderr[-2000:]
    written = sorted((tmp_path / "crops").glob("crop_*.png"))
    assert len(written) == 2
    corners = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes])
    to_crop, _, _ = topdown.crop_affines(corners, 0.3, (96, 128))
    expected = topdown.warp_crops([image, image], np.arange(2), to_crop, (96, 128))
    for path, crop in zip(written, expected):
        np.testing.assert_array_equal(cv2.imread(str(path)), crop)

def test_int8_quantisation_on_prepared_crops_keeps_the_keypoints(tmp_path, tinypose_export):
    sources = tmp_path / "sources.txt"
    sources.write_text("images/hrnet_demo.jpg\nimages/four_people_walking_gy_demo_7.jpg\n"
                       "video/squat_side_view.mp4 6   # a few frames\n")
    crops = tmp_path / "crops"
    result = run_module("calib/prepare_crops.py", "--list", str(sources), "--root", str(MEDIA), "--count", "10",
                        "--out", str(crops))
    assert result.returncode == 0, result.stderr[-2000:]
    written = sorted(crops.glob("crop_*.png"))
    assert len(written) == 10 and "from 3 sources" in result.stdout
    listed = [line.split() for line in (crops / "crops.txt").read_text().splitlines()[1:]]
    assert [row[0] for row in listed] == [p.name for p in written]
    assert {row[1] for row in listed} == {"hrnet_demo.jpg", "four_people_walking_gy_demo_7.jpg", "squat_side_view.mp4"}

    fp32 = tinypose_export.with_name(tinypose_export.name + "_ov")
    result = run_module("-m", "trainers.export", "quantize", str(fp32), "--calib", str(crops))
    assert result.returncode == 0, result.stderr[-3000:]
    int8 = fp32.with_name(fp32.name + "_int8")
    report = yaml.safe_load((int8 / "quantization.yml").read_text())
    assert all(report[k]["ms_batch1"] > 0 and report[k]["ms_batch8"] > 0 for k in ("fp32", "int8"))
    assert (int8 / "infer_cfg.yml").is_file()

    frame = Frame(stream="s", index=0, image=cv2.imread(str(IMAGES / "hrnet_demo.jpg")), capture_time=0.0,
                  media_time=0.0)
    detector = DetectorStage("detect", schema.Detector(id="detect", type="detector",
                                                       model="picodet_s_192_lcnet_pedestrian_ov"),
                             StageContext(graph_dir=Path("."), output_dir=tmp_path, model_paths=[MODELS]))
    detector.run([frame])
    detector.close()
    image, box = frame.image, frame.persons.boxes[:1]
    results = []
    for folder in (fp32, int8):
        estimator = folder_estimator(folder, expand_ratio=0.3, engine="openvino", threads=2)
        results.append(estimator.estimate([image], np.zeros(1, int), box)[0][0])
        estimator.engine.close()
    plain, quantised = results
    confident = plain[:, 2] > 0.5
    assert confident.sum() >= 10
    offsets = np.linalg.norm(quantised[confident, :2] - plain[confident, :2], axis=1)
    assert np.median(offsets) < 0.05 * (box[0, 3] - box[0, 1])
