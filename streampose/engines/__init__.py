"""Inference engines, and `load_engine`, which picks one for a model, device and precision.

Which engine reads which format, and where it runs:
  openvino     paddle (.pdmodel), onnx, openvino IR,  cpu (fp32; bf16 where the CPU has it natively);
               tflite (the `pose` stage's networks)   Intel gpu (fp32, fp16)
  paddle       paddle, paddle3                        cpu (oneDNN, fp32); NVIDIA gpu (fp32; TensorRT fp16, int8)
  onnxruntime  onnx                                   cpu (fp32); NVIDIA gpu (CUDA fp32; TensorRT fp16)

Precision "auto" is the engine's own default on the device: OpenVINO runs bf16 on a CPU with
native bf16 (AVX512-BF16 or AMX; fp32 otherwise), as it does when no precision is asked for;
the other engines run fp32. On the 2-core AVX512-BF16 machine of docs/performance.md bf16
cuts PicoDet-S-192's CPU per call from 3.6 to 2.4 ms and TinyPose-128x96's from 5.2 to 3.6 ms
(the keypoints move by a median 0.13% of the box height; docs/models.md).

When the requested device or precision is not available, `fallback` decides: "cpu" logs one
line saying why and loads the CPU engine at fp32; "stop" raises EngineUnavailableError.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from streampose.engines.base import Engine, EngineError, EngineUnavailableError, InputShapeError, TensorInfo
from streampose.models.folder import ModelFolder, cache_root

__all__ = ["Engine", "EngineError", "EngineUnavailableError", "InputShapeError", "TensorInfo", "load_engine",
           "ENGINES", "PRECISIONS", "installed_engines", "auto_engine", "auto_precision"]

log = logging.getLogger(__name__)

ENGINES = ("openvino", "paddle", "onnxruntime")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
_MODULES = {"openvino": "openvino", "paddle": "paddle", "onnxruntime": "onnxruntime"}
FORMATS = {
    "openvino": ("paddle", "onnx", "openvino", "tflite"),
    "paddle": ("paddle", "paddle3"),
    "onnxruntime": ("onnx",),
}
# Fastest first, per device (measured on CPU: OpenVINO runs PicoDet-S-192 about 4x faster than Paddle).
_PREFERENCE = {"cpu": ("openvino", "onnxruntime", "paddle"), "gpu": ("paddle", "onnxruntime", "openvino")}


def installed_engines() -> list[str]:
    return [name for name in ENGINES if importlib.util.find_spec(_MODULES[name]) is not None]


def load_engine(folder: ModelFolder, *, engine: str = "auto", device: str = "cpu", precision: str = "fp32",
                threads: int = 0, fallback: str = "cpu", max_batch: int = 1,
                cache_dir: Path | None = None, parallel: int = 1) -> Engine:
    """Load `folder`'s network.

    engine:    "auto" (fastest available for the device and format) or a name in ENGINES.
    device:    "cpu" or "gpu".
    precision: "auto" (the engine's default on the device, `auto_precision`), "fp32", "bf16"
               (OpenVINO on a CPU with native bf16), "fp16" or "int8" (TensorRT on an NVIDIA gpu).
    threads:   CPU inference threads; 0 = all cores.
    fallback:  "cpu" or "stop": what to do when the device or precision is not available.
    max_batch: largest batch `run` will be given.
    cache_dir: root of the engines' on-disk caches (compiled networks, TensorRT engines);
               default <cache>/ (~/.cache/streampose).
    parallel:  runs `run_parallel` may have going at once, each on `threads` threads (OpenVINO on
               the CPU: one stream per run); other engines run them one after the other.
    """
    for key, value, allowed in (("engine", engine, ("auto", *ENGINES)), ("device", device, ("cpu", "gpu")),
                                ("precision", precision, PRECISIONS),
                                ("fallback", fallback, ("cpu", "stop"))):
        if value not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    cache_dir = cache_dir or cache_root()
    name = engine if engine != "auto" else auto_engine(folder, device)
    if folder.format not in FORMATS[name]:
        raise EngineUnavailableError(f"engine {name} cannot read {folder.name} ({folder.format} format); "
                                     f"it reads {', '.join(FORMATS[name])}")
    if name not in installed_engines():
        raise EngineUnavailableError(f"engine {name} is not installed (pip install {_MODULES[name]})")

    if precision == "auto":
        precision = auto_precision(name, device)
    why_not = _unavailable_reason(name, device, precision)
    if why_not is None:
        log.info("%s: %s on %s at %s", folder.name, name, device, precision)
        try:
            return _create(name, folder, device=device, precision=precision, threads=threads, max_batch=max_batch,
                           cache_dir=cache_dir, parallel=parallel)
        except EngineUnavailableError as exc:  # e.g. a GPU provider listed but its libraries missing
            if device == "cpu" and precision == "fp32":
                raise
            why_not = str(exc)
    if fallback == "stop":
        raise EngineUnavailableError(f"{folder.name}: {why_not} (fallback: stop)")
    cpu_name = engine if engine != "auto" else auto_engine(folder, "cpu")
    log.warning("%s: %s; falling back to %s on cpu at fp32", folder.name, why_not, cpu_name)
    return _create(cpu_name, folder, device="cpu", precision="fp32", threads=threads, max_batch=max_batch,
                   cache_dir=cache_dir, parallel=parallel)


def auto_engine(folder: ModelFolder, device: str) -> str:
    """The engine `engine: auto` picks for `folder` on `device`: the fastest installed that reads it."""
    installed = installed_engines()
    for name in _PREFERENCE[device]:
        if name in installed and folder.format in FORMATS[name]:
            return name
    raise EngineUnavailableError(f"no installed engine reads {folder.name} ({folder.format} format); "
                                 f"installed: {', '.join(installed) or 'none'}")


def auto_precision(name: str, device: str) -> str:
    """What `precision: auto` runs engine `name` at on `device` here: OpenVINO's own default
    (bf16 on a CPU with native bf16), fp32 for the other engines."""
    if name == "openvino":
        from streampose.engines import openvino
        return openvino.default_precision(device)
    return "fp32"


def _unavailable_reason(name: str, device: str, precision: str) -> str | None:
    """Why `name` cannot run on `device` at `precision` here, or None when it can."""
    if name == "openvino":
        from streampose.engines import openvino
        return openvino.unavailable_reason(device, precision)
    if precision == "bf16":
        return f"{name} does not run bf16 (OpenVINO does, on a CPU with native bf16)"
    if name == "paddle":
        from streampose.engines import paddle
        return paddle.unavailable_reason(device, precision)
    from streampose.engines import onnxruntime
    return onnxruntime.unavailable_reason(device, precision)


def _create(name: str, folder: ModelFolder, *, device: str, precision: str, threads: int, max_batch: int,
            cache_dir: Path, parallel: int = 1) -> Engine:
    if name == "openvino":
        from streampose.engines.openvino import OpenVinoEngine
        return OpenVinoEngine(folder, device=device, precision=precision, threads=threads, max_batch=max_batch,
                              cache_dir=cache_dir / "ov_cache", parallel=parallel)
    if name == "paddle":
        from streampose.engines.paddle import PaddleEngine
        return PaddleEngine(folder, device=device, precision=precision, threads=threads, max_batch=max_batch,
                            cache_dir=cache_dir / "paddle_trt")
    from streampose.engines.onnxruntime import OnnxRuntimeEngine
    return OnnxRuntimeEngine(folder, device=device, precision=precision, threads=threads, max_batch=max_batch,
                             cache_dir=cache_dir / "ort_trt")
