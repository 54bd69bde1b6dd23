"""`python -m trainers.export model`: a checkpoint -> Paddle 3, OpenVINO IR and ONNX model folders.

The Paddle folder is a Paddle 3 program (model.json, PIR); OpenVINO and paddle2onnx convert from
a legacy program of the same network (trainers.export.legacy), which is not kept.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from streampose.models.folder import CONFIG_FILE
from trainers.common.checkpoint import build_from_checkpoint, load_checkpoint
from trainers.common.export import TOLERANCE, ExportError
from trainers.export.legacy import save_legacy_program

FORMATS = ("paddle", "openvino", "onnx")
SUFFIXES = {"paddle": "", "openvino": "_ov", "onnx": "_onnx"}
PROBE_BATCH = 2  # > 1, so that a batch fixed at 1 inside an export shows up as a mismatch
ONNX_OPSET = 11


@dataclass
class ExportReport:
    """folders: format -> folder written; differences: format -> largest |exported - layer|;
    skipped: format -> why it was not written."""

    folders: dict[str, Path] = field(default_factory=dict)
    differences: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def folder_for(out: Path, fmt: str) -> Path:
    """Where format `fmt` of an export to `out` goes: out, out_ov, out_onnx."""
    return out.with_name(out.name + SUFFIXES[fmt])


def export_model(checkpoint_path: Path, out: Path, formats: tuple[str, ...] = FORMATS, seed: int = 0) -> ExportReport:
    """Export the checkpoint's deployable weights (EMA where kept) to the folders of `formats`
    (the Paddle folder is always written)."""
    import paddle

    if not paddle.get_flags(["FLAGS_enable_pir_api"])["FLAGS_enable_pir_api"]:
        raise ExportError("paddle was imported with FLAGS_enable_pir_api=0, so it cannot save a Paddle 3 program "
                          "(model.json); run the export without that flag")
    checkpoint = load_checkpoint(checkpoint_path)
    layer = build_from_checkpoint(checkpoint)
    inputs = checkpoint["inputs"]
    rng = np.random.default_rng(seed)
    probe = {name: rng.standard_normal((PROBE_BATCH, *shape[1:])).astype(np.float32) for name, shape in inputs.items()}
    with paddle.no_grad():
        expected = layer(*(paddle.to_tensor(v) for v in probe.values())).numpy()
    sidecars = {CONFIG_FILE: checkpoint["infer_cfg"], "train_config.yml": checkpoint.get("config"),
                "metrics.yml": checkpoint.get("metrics")}

    out = Path(out).expanduser().absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    report = ExportReport()
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.export-", dir=out.parent) as tmp:
        staged: dict[str, Path] = {}
        paddle_dir = Path(tmp) / "paddle"
        specs = [paddle.static.InputSpec(list(shape), "float32", name) for name, shape in inputs.items()]
        paddle.jit.save(layer, str(paddle_dir / "model"), input_spec=specs)
        staged["paddle"] = paddle_dir
        if "openvino" in formats or "onnx" in formats:
            legacy = save_legacy_program(Path(checkpoint_path), Path(tmp) / "legacy" / "model")
        if "openvino" in formats:
            staged["openvino"] = _to_openvino(legacy, Path(tmp) / "openvino")
        if "onnx" in formats:
            try:
                staged["onnx"] = _to_onnx(legacy, Path(tmp) / "onnx")
            except ExportError as exc:
                report.skipped["onnx"] = str(exc)
        for fmt, folder in staged.items():
            for name, content in sidecars.items():
                if content is not None:
                    (folder / name).write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
            got = _RUNNERS[fmt](folder, probe)
            difference = float(np.abs(got - expected).max())
            if not difference <= TOLERANCE:
                raise ExportError(f"the exported {fmt} network differs from the checkpoint's by {difference:.3g} "
                                  f"(tolerance {TOLERANCE})")
            report.differences[fmt] = difference
        for fmt, folder in staged.items():
            target = folder_for(out, fmt)
            if target.exists():
                shutil.rmtree(target)
            folder.rename(target)
            report.folders[fmt] = target
    return report


def _to_openvino(legacy: Path, folder: Path) -> Path:
    """`legacy`: a legacy program's model.pdmodel, beside its .pdiparams."""
    import openvino as ov

    folder.mkdir()
    try:
        model = ov.convert_model(str(legacy))
    except Exception as exc:  # OpenVINO's frontends raise several unrelated types
        raise ExportError(f"OpenVINO cannot convert the Paddle program: {exc}") from None
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
    return folder


def _to_onnx(legacy: Path, folder: Path) -> Path:
    """paddle2onnx (on the legacy program `legacy`) in a child process: on a network it cannot
    convert it ends its process."""
    if importlib.util.find_spec("paddle2onnx") is None:
        raise ExportError("paddle2onnx is not installed (pip install paddle2onnx)")
    folder.mkdir()
    convert = "import sys, paddle2onnx; paddle2onnx.export(*sys.argv[1:4], opset_version=int(sys.argv[4]))"
    child = subprocess.run(
        [sys.executable, "-c", convert, str(legacy), str(legacy.with_suffix(".pdiparams")),
         str(folder / "model.onnx"), str(ONNX_OPSET)], capture_output=True, text=True)
    if child.returncode != 0 or not (folder / "model.onnx").is_file():
        output = re.sub(r"\x1b\[[0-9;]*m", "", child.stdout + child.stderr)
        errors = re.findall(r"\[ERROR\]\s*(.*)", output) or [line.strip() for line in output.splitlines()
                                                               if "Error" in line]
        raise ExportError(f"paddle2onnx {_version('paddle2onnx')} cannot convert this network: "
                          f"{errors[-1] if errors else f'exit status {child.returncode}'}")
    return folder


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _run_paddle(folder: Path, probe: dict[str, np.ndarray]) -> np.ndarray:
    from paddle import inference

    config = inference.Config(str(folder / "model.json"), str(folder / "model.pdiparams"))
    config.disable_gpu()
    # Paddle 3.3's oneDNN kernels reject interpolate's attributes (TinyPose upsamples), and
    # the check compares numbers, not speed: the plain CPU kernels serve every network.
    config.disable_mkldnn()
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    for name, value in probe.items():
        handle = predictor.get_input_handle(name)
        handle.reshape(value.shape)
        handle.copy_from_cpu(value)
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def _run_openvino(folder: Path, probe: dict[str, np.ndarray]) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(probe)[0]


def _run_onnx(folder: Path, probe: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, probe)[0]


_RUNNERS = {"paddle": _run_paddle, "openvino": _run_openvino, "onnx": _run_onnx}
