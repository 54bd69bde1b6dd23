"""`python -m trainers.export model`: a checkpoint -> Paddle 3, OpenVINO IR and ONNX model folders.

The Paddle folder is a Paddle 3 program (model.json, PIR); OpenVINO and paddle2onnx convert from
a legacy program of the same network (trainers.export.legacy), which is not kept.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from streampose.engines import load_engine
from streampose.models.convert import ConvertError, convert
from streampose.models.folder import CONFIG_FILE, load_model_folder
from trainers.common.checkpoint import build_from_checkpoint, load_checkpoint
from trainers.common.export import TOLERANCE, ExportError
from trainers.export.legacy import save_legacy_program

FORMATS = ("paddle", "openvino", "onnx")
SUFFIXES = {"paddle": "", "openvino": "_ov", "onnx": "_onnx"}
ENGINES = {"paddle": "paddle", "openvino": "openvino", "onnx": "onnxruntime"}  # what each folder is for
PROBE_BATCH = 2  # > 1, so that a batch fixed at 1 inside an export shows up as a mismatch


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
        staged = {"paddle": Path(tmp) / "paddle"}
        specs = [paddle.static.InputSpec(list(shape), "float32", name) for name, shape in inputs.items()]
        paddle.jit.save(layer, str(staged["paddle"] / "model"), input_spec=specs)
        if "openvino" in formats or "onnx" in formats:
            legacy = save_legacy_program(Path(checkpoint_path), Path(tmp) / "legacy" / "model")
            _write_sidecars(legacy.parent, sidecars)
            source = load_model_folder(legacy.parent)
            for fmt in ("openvino", "onnx"):
                if fmt in formats:
                    try:
                        staged[fmt] = convert(source, fmt, Path(tmp)).path
                    except ConvertError as exc:
                        if fmt == "openvino":
                            raise ExportError(str(exc)) from None
                        report.skipped[fmt] = str(exc)
        for fmt, folder in staged.items():
            _write_sidecars(folder, sidecars)
            difference = float(np.abs(_run(folder, ENGINES[fmt], probe) - expected).max())
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


def _write_sidecars(folder: Path, sidecars: dict[str, dict | None]) -> None:
    for name, content in sidecars.items():
        if content is not None:
            (folder / name).write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")


def _run(folder: Path, engine_name: str, probe: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of the exported network on `probe`, run by the pipeline's `engine_name`
    engine on the CPU."""
    engine = load_engine(load_model_folder(folder), engine=engine_name, max_batch=PROBE_BATCH, fallback="stop")
    try:
        return engine.run(probe)[engine.outputs[0].name]
    finally:
        engine.close()
