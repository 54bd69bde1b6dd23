"""OpenVINO engine: reads Paddle (.pdmodel), ONNX and OpenVINO IR networks.

Batches: the network is compiled once per batch size with the batch fixed; `prepare` compiles
every size a stage will use before the first frame (a size first met mid-run would stall that
frame for the compile: the keypoint thread spent 8.6% of a live run compiling, issue 17).
Measured on the 2-core CPU this was written on (2 threads, LATENCY hint): a fixed batch runs
20-30% faster than one network reshaped to a dynamic batch (TinyPose 128x96 batch 8: 9.2 vs
11.8 ms; YOLOX-nano batch 8: 41 vs 60 ms). Compiled networks are cached on disk (CACHE_DIR, by
default ~/.cache/streampose/ov_cache), so later starts skip most of the compile
(docs/performance.md has the start times).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import openvino as ov

from streampose.engines.base import Engine, EngineError, TensorInfo
from streampose.models.folder import ModelFolder

log = logging.getLogger(__name__)

_DEVICES = {"cpu": "CPU", "gpu": "GPU"}
_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_PRECISION_NAMES = {hint: name for name, hint in _PRECISION_HINTS.items()}
# The capability OpenVINO lists for a device that runs the precision natively.
_CAPABILITIES = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16"}


def available_devices() -> list[str]:
    """Devices OpenVINO can run on here, as streampose names them ("cpu", "gpu")."""
    found = ov.Core().available_devices
    return [name for name, ov_name in _DEVICES.items() if any(d.startswith(ov_name) for d in found)]


def default_precision(device: str) -> str:
    """The precision OpenVINO runs at on `device` when none is asked for: bf16 on a CPU with
    AVX512-BF16 or AMX, fp16 on an ARM CPU or a GPU, fp32 otherwise, and fp32 for a device it
    does not find (which `unavailable_reason` then names)."""
    if device not in available_devices():
        return "fp32"
    hint = ov.Core().get_property(_DEVICES[device], "INFERENCE_PRECISION_HINT")
    return _PRECISION_NAMES.get(hint.get_type_name(), "fp32")


def unavailable_reason(device: str, precision: str) -> str | None:
    """Why OpenVINO cannot run on `device` at `precision` here, or None when it can."""
    if device == "gpu" and "gpu" not in available_devices():
        return "OpenVINO finds no GPU (it runs on Intel GPUs only)"
    if precision == "int8":
        return f"OpenVINO on {device} does not run int8 (int8 needs TensorRT on an NVIDIA GPU)"
    capabilities = ov.Core().get_property(_DEVICES[device], "OPTIMIZATION_CAPABILITIES")
    if _CAPABILITIES[precision] not in capabilities:
        return (f"OpenVINO on this {device} does not run {precision} natively (it lists "
                f"{', '.join(c for c in capabilities if c in _CAPABILITIES.values())}); use precision auto or fp32")
    return None


class OpenVinoEngine(Engine):
    name = "openvino"

    def __init__(self, folder: ModelFolder, *, device: str = "cpu", precision: str = "fp32", threads: int = 0,
                 max_batch: int = 1, cache_dir: Path | None = None, parallel: int = 1):
        self._core = ov.Core()
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            self._core.set_property({"CACHE_DIR": str(cache_dir)})
        try:
            self._model = self._core.read_model(str(folder.network), str(folder.weights) if folder.weights else None)
        except RuntimeError as exc:
            raise EngineError(f"OpenVINO cannot read {folder.network}: {exc}") from None
        self._device = _DEVICES[device]
        self._config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": _PRECISION_HINTS[precision]}
        if self._device == "CPU":
            # OpenVINO pins a network's threads to cores it picks without knowing the others: in
            # benchmarks.peer's graph on 2 cores the detector's and the keypoint stage's threads
            # were both pinned to core 0 in 3 runs of 3 (sampled from /proc), the two engines
            # time-slicing one core while the other had only decoding. The core plan divides the
            # cores; the OS places the threads.
            self._config["ENABLE_CPU_PINNING"] = False
        if threads > 0 and self._device == "CPU":
            self._config["INFERENCE_NUM_THREADS"] = threads
        self.parallel = parallel if self._device == "CPU" else 1
        if self.parallel > 1:
            # One CPU stream of `threads` threads per run that may go at once (run_parallel); a single
            # run takes one stream, so it costs no more than with one.
            del self._config["PERFORMANCE_HINT"]
            self._config["NUM_STREAMS"] = self.parallel
            self._config["INFERENCE_NUM_THREADS"] = self.parallel * max(threads, 1)
        self._requests: dict[int, list[ov.InferRequest]] = {}  # batch size -> one request per stream
        self.compiled_batches: list[int] = []  # every compile, in order (kept after close)

        inputs = [TensorInfo(_name(p), (-1, *_dims(p.get_partial_shape())[1:]),
                             np.dtype(p.get_element_type().to_dtype())) for p in self._model.inputs]
        outputs = [TensorInfo(_name(p), (-1, *_dims(p.get_partial_shape())[1:]),
                              np.dtype(p.get_element_type().to_dtype())) for p in self._model.outputs]
        batch_capable = max_batch > 1 and self._reshapes_to_batch(2)
        if max_batch > 1 and not batch_capable:
            log.info("%s: the network's batch is fixed at 1; batches run one image at a time", folder.name)
        super().__init__(folder, inputs, outputs, max_batch, batch_capable, precision)
        self._requests_for(1)  # compile now, so a broken network fails at load time

    def _reshapes_to_batch(self, batch: int) -> bool:
        """Whether the network really batches: some exports fix the batch inside (a reshape to
        [1, ...] that either fails or silently folds the batch into another dimension)."""
        try:
            model = self._batch_model(batch)
        except RuntimeError:
            return False
        return all(port.get_partial_shape()[0] == batch for port in model.outputs)

    def _batch_model(self, batch: int) -> ov.Model:
        model = self._model.clone()
        shapes = {}
        for port in model.inputs:
            shape = port.get_partial_shape()
            shape[0] = batch
            shapes[port] = shape
        model.reshape(shapes)
        return model

    def _requests_for(self, batch: int) -> list[ov.InferRequest]:
        """The batch size's infer requests, one per CPU stream (compiled on first use)."""
        if batch not in self._requests:
            try:
                compiled = self._core.compile_model(self._batch_model(batch), self._device, self._config)
            except RuntimeError as exc:
                raise EngineError(f"OpenVINO cannot compile {self.folder.network} for {self._device} "
                                  f"at batch {batch}: {exc}") from None
            self._requests[batch] = [compiled.create_infer_request() for _ in range(self.parallel)]
            self.compiled_batches.append(batch)
        return self._requests[batch]

    def prepare(self, batch_sizes: Iterable[int]) -> None:
        start = time.perf_counter()
        sizes = sorted({b if self.batch_capable else 1 for b in batch_sizes})
        for batch in sizes:
            if not 1 <= batch <= self.max_batch:
                raise ValueError(f"batch size {batch} is outside 1..{self.max_batch}")
            self._requests_for(batch)
        log.info("%s: batch sizes %s ready in %.2f s", self.folder.name, sizes, time.perf_counter() - start)

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Ports by position: a compiled model keeps the model's port order, but not which of a
        # tensor's several names get_any_name returns (it differed between the two in 2026.4).
        request = self._requests_for(next(iter(feed.values())).shape[0])[0]
        results = request.infer({i: feed[t.name] for i, t in enumerate(self.inputs)})
        return {t.name: results[i] for i, t in enumerate(self.outputs)}

    def _run_parallel(self, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        results = []
        for wave in range(0, len(feeds), self.parallel):
            started = []
            for feed in feeds[wave:wave + self.parallel]:
                requests = self._requests_for(len(next(iter(feed.values()))))
                # A wave has at most `parallel` runs: its batch size has a request not yet started in it.
                request = next(r for r in requests if not any(r is s for s in started))
                request.start_async({i: feed[t.name] for i, t in enumerate(self.inputs)})
                started.append(request)
            for request in started:
                request.wait()
                # Copied: the request's output buffers are reused by its next run.
                results.append({t.name: request.get_output_tensor(i).data.copy() for i, t in enumerate(self.outputs)})
        return results

    def close(self) -> None:
        self._requests.clear()


def _name(port: ov.Output) -> str:
    """One name for a tensor that may carry several (a converted Paddle output is both
    'conv2d_35.tmp_1' and 'save_infer_model/scale_0.tmp_0'): the smallest, the same every load."""
    names = port.get_names()
    return min(names) if names else port.get_node().get_friendly_name()


def _dims(shape: ov.PartialShape) -> list[int]:
    return [d.get_length() if d.is_static else -1 for d in shape]
