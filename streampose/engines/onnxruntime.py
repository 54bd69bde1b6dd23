"""ONNX Runtime engine: ONNX networks on the CPU, or an NVIDIA GPU through the CUDA (fp32) or
TensorRT (fp16, engines cached on disk) execution providers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from streampose.engines.base import Engine, EngineError, EngineUnavailableError, TensorInfo, probe
from streampose.models.folder import ModelFolder

log = logging.getLogger(__name__)

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
           "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


def _wanted_provider(device: str, precision: str) -> str:
    if device == "cpu":
        return "CPUExecutionProvider"
    return "CUDAExecutionProvider" if precision == "fp32" else "TensorrtExecutionProvider"


def unavailable_reason(device: str, precision: str) -> str | None:
    """Why ONNX Runtime cannot run on `device` at `precision` here, or None when it can."""
    if precision == "int8":
        return "ONNX Runtime's TensorRT int8 needs a calibration table streampose does not make (use the paddle engine)"
    if device == "cpu" and precision != "fp32":
        return f"ONNX Runtime on cpu does not run {precision} (fp16 needs TensorRT on an NVIDIA GPU)"
    provider = _wanted_provider(device, precision)
    available = ort.get_available_providers()
    if provider not in available:
        return (f"this onnxruntime has no {provider} (it has {', '.join(available)}; "
                "the GPU needs the onnxruntime-gpu package)")
    return None


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, folder: ModelFolder, *, device: str = "cpu", precision: str = "fp32", threads: int = 0,
                 max_batch: int = 1, cache_dir: Path | None = None):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        wanted = _wanted_provider(device, precision)
        providers: list = ["CPUExecutionProvider"]
        if wanted == "CUDAExecutionProvider":
            providers.insert(0, wanted)
        elif wanted == "TensorrtExecutionProvider":
            cache = (cache_dir or Path("ort_trt")) / folder.name
            cache.mkdir(parents=True, exist_ok=True)
            providers[:0] = [(wanted, {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                       "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True,
                                       "trt_timing_cache_path": str(cache)}),
                             "CUDAExecutionProvider"]
        try:
            self._session = ort.InferenceSession(str(folder.network), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types, all meaning "cannot load"
            raise EngineError(f"ONNX Runtime cannot load {folder.network}: {exc}") from None
        if self._session.get_providers()[0] != wanted:
            raise EngineUnavailableError(f"ONNX Runtime could not start {wanted} (it fell back to "
                                         f"{self._session.get_providers()[0]}; are CUDA/TensorRT libraries installed?)")
        declared = [TensorInfo(i.name, tuple(d if isinstance(d, int) else -1 for d in i.shape),
                               np.dtype(_DTYPES[i.type])) for i in self._session.get_inputs()]
        super().__init__(folder, declared, [], max_batch, batch_capable=False, precision=precision)
        self._output_names = [o.name for o in self._session.get_outputs()]
        outputs, batch_capable = probe(self._run, declared, max_batch > 1 and all(t.shape[0] == -1 for t in declared),
                                       folder.config.input_size)
        if max_batch > 1 and not batch_capable:
            log.info("%s: the network's batch is fixed at 1; batches run one image at a time", folder.name)
        self.outputs = outputs
        self.batch_capable = batch_capable
        self.inputs = [TensorInfo(t.name, (-1, *t.shape[1:]), t.dtype) for t in declared]

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self._session.run(self._output_names, feed)))

    def close(self) -> None:
        self._session = None
