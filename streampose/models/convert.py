"""`streampose models convert`: write a model folder in another network format.

openvino: any format OpenVINO reads (Paddle, ONNX) -> OpenVINO IR (ov.save_model, fp32 weights,
          so outputs match the source).
onnx:     Paddle -> ONNX through paddle2onnx, when it is installed.
The new folder gets the same infer_cfg.yml and is written in full before it appears.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import yaml

from streampose.models.folder import CONFIG_FILE, ModelFolder, cache_root, load_model_folder

SUFFIXES = {"openvino": "_ov", "onnx": "_onnx"}
ONNX_OPSET = 11


class ConvertError(RuntimeError):
    """The conversion is not possible here, or failed."""


def convert(folder: ModelFolder, to: str, dest_root: Path | None = None, *, force: bool = False) -> ModelFolder:
    """Convert `folder` to format `to` ("openvino" or "onnx") into `dest_root`/<name>_ov or
    <name>_onnx (default under <cache>/models, which is on the search path)."""
    if to not in SUFFIXES:
        raise ConvertError(f"cannot convert to {to!r}; targets: {', '.join(SUFFIXES)}")
    if folder.format == to:
        raise ConvertError(f"{folder.name} is already in {to} format")
    dest_root = dest_root or cache_root() / "models"
    target = dest_root / (folder.name.removesuffix("_ov").removesuffix("_onnx") + SUFFIXES[to])
    if target.exists() and not force:
        raise ConvertError(f"{target} already exists (use --force to replace it)")
    dest_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.convert-", dir=dest_root) as tmp:
        work = Path(tmp) / target.name
        work.mkdir()
        if to == "openvino":
            _to_openvino(folder, work)
        else:
            _to_onnx(folder, work)
        cfg = folder.path / CONFIG_FILE
        if cfg.is_file():
            shutil.copyfile(cfg, work / CONFIG_FILE)
        else:  # a built-in config (zoo): write it out so the new folder stands alone
            (work / CONFIG_FILE).write_text(yaml.safe_dump(dict(folder.config.raw), sort_keys=False), encoding="utf-8")
        converted = load_model_folder(work)
        if converted.format != to:
            raise ConvertError(f"conversion wrote {converted.format}, not {to}")
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    return load_model_folder(target)


def _to_openvino(folder: ModelFolder, out: Path) -> None:
    import openvino as ov

    try:
        model = ov.Core().read_model(str(folder.network), str(folder.weights) if folder.weights else None)
        ov.save_model(model, str(out / "model.xml"), compress_to_fp16=False)
    except RuntimeError as exc:
        raise ConvertError(f"OpenVINO cannot convert {folder.network}: {exc}") from None


def _to_onnx(folder: ModelFolder, out: Path) -> None:
    """paddle2onnx in a child process: on some networks it cannot convert it ends its process."""
    if folder.format not in ("paddle", "paddle3"):
        raise ConvertError(f"only Paddle models convert to ONNX; {folder.name} is {folder.format}")
    if importlib.util.find_spec("paddle2onnx") is None:
        raise ConvertError("converting to ONNX needs paddle2onnx, which is not installed (pip install paddle2onnx); "
                           "`--to openvino` works without it")
    # optimize_tool onnxoptimizer (pinned in the lock), not paddle2onnx's default polygraphy: that
    # one sets POLYGRAPHY_AUTOINSTALL_DEPS=1 and pip-installs onnx-graphsurgeon, sympy, mpmath and
    # ml-dtypes, unpinned, into the running environment (seen in a clean-clone CI venv).
    export = ("import sys, paddle2onnx; paddle2onnx.export(*sys.argv[1:4], opset_version=int(sys.argv[4]), "
              "optimize_tool='onnxoptimizer')")
    child = subprocess.run([sys.executable, "-c", export, str(folder.network), str(folder.weights),
                            str(out / "model.onnx"), str(ONNX_OPSET)], capture_output=True, text=True)
    if child.returncode != 0 or not (out / "model.onnx").is_file():
        output = re.sub(r"\x1b\[[0-9;]*m", "", child.stdout + child.stderr)  # colour codes
        errors = re.findall(r"\[ERROR\]\s*(.*)", output) or [line.strip() for line in output.splitlines()
                                                               if "Error" in line]
        raise ConvertError(f"paddle2onnx {version('paddle2onnx')} cannot convert {folder.network}: "
                           f"{errors[-1] if errors else f'exit status {child.returncode}'}")
