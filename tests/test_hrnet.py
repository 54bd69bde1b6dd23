"""HRNet-W32 in the keypoint trainer: heatmaps at 1/4 of the input, the paper's 28.5 M
parameters, selected by its config, learning through the trainer's loss, and exported to
OpenVINO IR and ONNX that reproduce the Paddle network."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import REPO

# trainers/ is a folder of the repository, not part of the installed package.
sys.path.insert(0, str(REPO))
from trainers.common.checkpoint import save_checkpoint  # noqa: E402
from trainers.common.export import TOLERANCE  # noqa: E402
from trainers.common.yaml_config import load_yaml_config  # noqa: E402
from trainers.keypoint.config import TrainConfig  # noqa: E402
from trainers.keypoint.models import build_network, heatmap_shape  # noqa: E402
from trainers.keypoint.targets import encode_heatmaps  # noqa: E402
from trainers.keypoint.train import BUILDER, heatmap_loss  # noqa: E402

CONFIG = REPO / "trainers" / "keypoint" / "configs" / "hrnet_w32_256x192.yml"
PAPER_PARAMETERS = 28.5e6  # HRNet-W32, Sun et al. 2019, Table 1


@pytest.fixture(scope="module")
def config() -> TrainConfig:
    return load_yaml_config(TrainConfig, CONFIG)


@pytest.fixture(scope="module")
def hrnet_w32(config):
    """The network the shipped config builds, as the trainer builds it."""
    network = build_network(**config.model.builder_kwargs(config.input_size, config.keypoints.num_joints))
    network.eval()
    return network


def test_the_config_builds_hrnet_w32_with_the_papers_parameter_count(config, hrnet_w32):
    assert config.model.arch == "hrnet" and tuple(config.input_size) == (192, 256)
    trainable = sum(int(p.numel()) for p in hrnet_w32.parameters() if not p.stop_gradient)
    assert abs(trainable - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.01, trainable


@pytest.mark.parametrize("width, height", [(192, 256), (96, 128)])
def test_heatmaps_are_at_a_quarter_of_the_input(hrnet_w32, width, height):
    with paddle.no_grad():
        heatmaps = hrnet_w32(paddle.randn([2, 3, height, width]))
    assert tuple(heatmaps.shape) == (2, *heatmap_shape((width, height), 17)) == (2, 17, height // 4, width // 4)


def test_training_steps_through_the_trainers_loss_fit_a_batch():
    paddle.seed(0)
    network = build_network("hrnet", [96, 128], 17, hrnet_width=8)
    network.train()
    rng = np.random.default_rng(0)
    images = paddle.to_tensor(rng.standard_normal((4, 3, 128, 96)).astype(np.float32))
    points = rng.uniform([2, 2], [22, 30], size=(4, 17, 2))
    labelled = rng.random((4, 17)) < 0.9
    targets, weights = (paddle.to_tensor(a) for a in encode_heatmaps(points, labelled, (24, 32), sigma=2.0))
    # The loss of predicting nothing: an untrained network's heatmaps are all close to zero.
    zero_loss = float(heatmap_loss(paddle.zeros_like(targets), targets, weights))
    optimizer = paddle.optimizer.Adam(learning_rate=1e-3, parameters=network.parameters())
    losses = []
    for _ in range(10):
        loss = heatmap_loss(network(images), targets, weights)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * min(losses[0], zero_loss), (zero_loss, losses)


def test_an_exported_hrnet_reproduces_the_paddle_network_in_openvino_and_onnx(tmp_path, config):
    from streampose.engines import load_engine
    from streampose.models.folder import load_model_folder

    kwargs = {"arch": "hrnet", "hrnet_width": 8, "input_size": [96, 128], "num_joints": 17}
    paddle.seed(1)
    network = build_network(**kwargs)
    # Non-trivial batch-norm statistics, as after training.
    network.train()
    with paddle.no_grad():
        network(paddle.randn([4, 3, 128, 96]) * 2 + 0.5)
    network.eval()
    infer_cfg = {**config.infer_cfg, "Preprocess": [{**config.infer_cfg["Preprocess"][0], "trainsize": [96, 128]},
                                                    *config.infer_cfg["Preprocess"][1:]]}
    save_checkpoint(tmp_path / "hrnet.pdckpt", {
        "builder": BUILDER, "builder_kwargs": kwargs, "inputs": {"image": [-1, 3, 128, 96]}, "infer_cfg": infer_cfg,
        "config": {"note": "test"}, "metrics": {"AP": 0.0}, "model": network.state_dict(), "ema": None})

    result = subprocess.run([sys.executable, "-m", "trainers.export", "model", str(tmp_path / "hrnet.pdckpt"),
                             "--out", str(tmp_path / "hrnet")],
                            capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]

    probe = np.random.default_rng(2).standard_normal((3, 3, 128, 96)).astype(np.float32)
    with paddle.no_grad():
        expected = network(paddle.to_tensor(probe)).numpy()
    # The fuse layers up-sample to explicit sizes, which paddle2onnx converts (a scale factor it cannot).
    for suffix, fmt, engine_name in (("_ov", "openvino", "openvino"), ("_onnx", "onnx", "onnxruntime")):
        folder = load_model_folder(tmp_path / f"hrnet{suffix}")
        assert folder.format == fmt
        engine = load_engine(folder, engine=engine_name, max_batch=4, fallback="stop")
        try:
            got = engine.run({engine.inputs[0].name: probe})
        finally:
            engine.close()
        heatmaps = next(v for v in got.values() if v.ndim == 4)
        assert heatmaps.shape == (3, 17, 32, 24)
        assert np.abs(heatmaps - expected).max() < TOLERANCE, fmt
