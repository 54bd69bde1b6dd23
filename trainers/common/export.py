"""Export a trained Paddle layer as a streampose model folder.

The folder holds the network twice, for the two engines that read it: model.json +
model.pdiparams (Paddle 3, `paddle.jit.save`) and model.xml + model.bin (OpenVINO IR, fp32;
found first, so `engine: auto` runs OpenVINO on the CPU), beside infer_cfg.yml and any extra
files (training settings, validation metrics).

OpenVINO reads no Paddle 3 (PIR) program, so the IR comes from a legacy program
(model.pdmodel): a child process, started with the PIR API switched off (a process-wide flag
read when paddle is imported), rebuilds the layer from `builder`, loads the trained weights,
saves the legacy program, converts it (ov.convert_model, ov.save_model) and runs the IR on the
probe input with a fixed batch and thread count, as streampose's engine compiles it (so that
an OpenVINO crash on the network fails the export, not the training process). Both exported
networks must agree with the layer, or the export fails.

Run as a module, this file is that child: python -m trainers.common.export REQUEST.json
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
# Largest difference allowed between the layer's output and an exported network's, same units.
TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """An exported network is missing or disagrees with the trained layer."""


def child_env(**variables: str) -> dict[str, str]:
    """The environment for a child `python -m trainers...`: this one plus `variables`, with the
    repository on PYTHONPATH (trainers/ is a folder of it, not an installed package)."""
    return {**os.environ, **variables,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def export_model_folder(layer, builder: str, builder_kwargs: dict, inputs: dict[str, tuple[int, ...]],
                        folder: Path, infer_cfg: dict, probe: np.ndarray,
                        extra_files: dict[str, dict] | None = None) -> Path:
    """Write `folder` (replacing it) with `layer`'s network in Paddle 3 and OpenVINO IR formats.

    builder:        "package.module:callable" that makes an untrained layer of the same shape
                    from `builder_kwargs` (JSON-compatible).
    inputs:         input name -> shape with -1 for the batch, float32; the layer's forward takes
                    them in this order.
    probe:          an input batch (for a one-input layer) both exports must reproduce.
    extra_files:    file name -> mapping written as YAML beside infer_cfg.yml.
    """
    import paddle

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    layer.eval()
    specs = [paddle.static.InputSpec(list(shape), "float32", name) for name, shape in inputs.items()]
    expected = layer(paddle.to_tensor(probe)).numpy()
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.export-", dir=folder.parent) as tmp:
        work = Path(tmp) / folder.name
        paddle.jit.save(layer, str(work / "model"), input_spec=specs)
        weights = Path(tmp) / "weights.pdparams"
        paddle.save(layer.state_dict(), str(weights))
        np.save(Path(tmp) / "probe.npy", probe)
        request = {"builder": builder, "kwargs": builder_kwargs, "weights": str(weights),
                   "inputs": {name: list(shape) for name, shape in inputs.items()},
                   "legacy": str(Path(tmp) / "legacy" / "model"), "xml": str(work / "model.xml"),
                   "probe": str(Path(tmp) / "probe.npy"), "result": str(Path(tmp) / "openvino.npy")}
        request_file = Path(tmp) / "request.json"
        request_file.write_text(json.dumps(request), encoding="utf-8")
        child = subprocess.run([sys.executable, "-m", "trainers.common.export", str(request_file)],
                               env=child_env(FLAGS_enable_pir_api="0"), capture_output=True, text=True)
        if child.returncode != 0:
            raise ExportError(f"OpenVINO conversion or test run failed (exit status {child.returncode}):\n"
                              f"{child.stderr[-3000:]}")
        for name, got in (("model.json", _run_paddle(work, probe)), ("model.xml", np.load(request["result"]))):
            difference = float(np.abs(got - expected).max())
            if not difference <= TOLERANCE:
                raise ExportError(f"exported {name} differs from the trained layer by {difference:.3g} "
                                  f"(tolerance {TOLERANCE})")
        (work / "infer_cfg.yml").write_text(yaml.safe_dump(infer_cfg, sort_keys=False), encoding="utf-8")
        for name, content in (extra_files or {}).items():
            (work / name).write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        work.rename(folder)
    return folder


def _run_paddle(folder: Path, probe: np.ndarray) -> np.ndarray:
    from paddle import inference

    config = inference.Config(str(folder / "model.json"), str(folder / "model.pdiparams"))
    config.disable_gpu()
    # Paddle 3.3's oneDNN kernels reject interpolate's attributes (TinyPose upsamples), and
    # the check compares numbers, not speed: the plain CPU kernels serve every network.
    config.disable_mkldnn()
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(probe.shape)
    handle.copy_from_cpu(probe)
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def _convert(request: dict) -> None:
    """The child: rebuild, load weights, save a legacy program, convert it to OpenVINO IR, run it."""
    import openvino as ov
    import paddle

    module, _, name = request["builder"].partition(":")
    layer = getattr(importlib.import_module(module), name)(**request["kwargs"])
    layer.set_state_dict(paddle.load(request["weights"]))
    layer.eval()
    specs = [paddle.static.InputSpec(shape, "float32", input_name) for input_name, shape in request["inputs"].items()]
    paddle.jit.save(layer, request["legacy"], input_spec=specs)
    model = ov.convert_model(request["legacy"] + ".pdmodel")
    ov.save_model(model, request["xml"], compress_to_fp16=False)
    probe = np.load(request["probe"])
    saved = ov.Core().read_model(request["xml"])
    saved.reshape({saved.inputs[0]: ov.PartialShape(list(probe.shape))})
    compiled = ov.Core().compile_model(saved, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    np.save(request["result"], compiled(probe)[0])


if __name__ == "__main__":
    _convert(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
