"""A checkpoint's network as a legacy Paddle program (model.pdmodel + model.pdiparams): the
format OpenVINO's and paddle2onnx's Paddle readers take, which the exporter converts from.

Paddle 3 writes it only with the PIR API switched off, a process-wide flag read when paddle is
imported, so the program is saved by a child process of its own:

    FLAGS_enable_pir_api=0 python -m trainers.export.legacy CHECKPOINT PREFIX
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from trainers.common.export import ExportError, child_env


def save_legacy_program(checkpoint_path: Path, prefix: Path) -> Path:
    """Write PREFIX.pdmodel + PREFIX.pdiparams of the checkpoint's deployable network; returns
    the .pdmodel path."""
    child = subprocess.run([sys.executable, "-m", "trainers.export.legacy", str(checkpoint_path), str(prefix)],
                           env=child_env(FLAGS_enable_pir_api="0"), capture_output=True, text=True)
    program = prefix.with_name(prefix.name + ".pdmodel")
    if child.returncode != 0 or not program.is_file():
        raise ExportError(f"saving the legacy Paddle program failed (exit status {child.returncode}):\n"
                          f"{child.stderr[-3000:]}")
    return program


def _save(checkpoint_path: Path, prefix: Path) -> None:
    import paddle

    from trainers.common.checkpoint import build_from_checkpoint, load_checkpoint

    checkpoint = load_checkpoint(checkpoint_path)
    layer = build_from_checkpoint(checkpoint)
    specs = [paddle.static.InputSpec(list(shape), "float32", name) for name, shape in checkpoint["inputs"].items()]
    paddle.jit.save(layer, str(prefix), input_spec=specs)


if __name__ == "__main__":
    _save(Path(sys.argv[1]), Path(sys.argv[2]))
