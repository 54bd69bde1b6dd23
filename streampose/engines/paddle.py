"""Paddle Inference engine: Paddle exports (model.pdmodel or Paddle 3's model.json + model.pdiparams).

CPU runs through oneDNN. On an NVIDIA GPU, fp32 runs Paddle's CUDA kernels and fp16/int8 run
TensorRT subgraphs: serialized engines are kept in the cache (use_static), the batch dimension's
range is collected once into a shape file and reused (tuned dynamic shape), and int8 is
calibrated on images from a calibration folder (the calibration table lands in the cache too).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from streampose.engines.base import Engine, EngineError, TensorInfo, probe
from streampose.models.folder import ModelFolder
from streampose.models.infer_cfg import InferConfig
from streampose.sources.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

# paddle.framework.proto VarType codes (legacy programs) and PIR type names (model.json).
_LEGACY_DTYPES = {0: np.bool_, 1: np.int16, 2: np.int32, 3: np.int64, 4: np.float16, 5: np.float32,
                  6: np.float64, 20: np.uint8, 21: np.int8}
_PIR_DTYPES = {"t_bool": np.bool_, "t_i16": np.int16, "t_i32": np.int32, "t_i64": np.int64, "t_f16": np.float16,
               "t_f32": np.float32, "t_f64": np.float64, "t_ui8": np.uint8, "t_i8": np.int8}


def _import_paddle():
    with warnings.catch_warnings():  # paddle warns about ccache (for building extensions) on import
        warnings.filterwarnings("ignore", message="No ccache found")
        import paddle
    return paddle


def unavailable_reason(device: str, precision: str) -> str | None:
    """Why Paddle cannot run on `device` at `precision` here, or None when it can."""
    paddle = _import_paddle()
    if device == "cpu":
        return None if precision == "fp32" else \
            f"Paddle on cpu does not run {precision} (fp16/int8 need TensorRT on an NVIDIA GPU)"
    if not paddle.is_compiled_with_cuda():
        return f"this paddlepaddle {paddle.__version__} is a CPU build (no CUDA), so it cannot run on the GPU" + (
            f" or use TensorRT {precision}" if precision != "fp32" else "")
    if paddle.device.cuda.device_count() == 0:
        return "Paddle finds no CUDA GPU"
    if precision != "fp32" and not paddle.inference.get_trt_compile_version()[0]:
        return f"this paddlepaddle build has no TensorRT, needed for {precision}"
    return None


class PaddleEngine(Engine):
    name = "paddle"

    def __init__(self, folder: ModelFolder, *, device: str = "cpu", precision: str = "fp32", threads: int = 0,
                 max_batch: int = 1, cache_dir: Path | None = None, calib_dir: Path = Path("calib")):
        _import_paddle()
        declared = _declared_inputs(folder)
        self._device, self._precision, self._threads = device, precision, threads
        self._cache = (cache_dir or Path("paddle_trt")) / f"{folder.name}-{precision}-b{max_batch}"
        self._onednn = device == "cpu"
        self._predictor = None
        super().__init__(folder, declared, [], max_batch,
                         batch_capable=max_batch > 1 and all(t.shape[0] == -1 for t in declared), precision=precision)
        if precision != "fp32":
            self._prepare_tensorrt(calib_dir)
        try:
            outputs = self._create_and_probe()
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            if not self._onednn:
                raise EngineError(f"Paddle cannot run {folder.network}: {exc}") from None
            log.warning("%s: oneDNN cannot run this network (%s); using Paddle's plain CPU kernels",
                        folder.name, str(exc).splitlines()[0])
            self._onednn = False
            try:
                outputs = self._create_and_probe()
            except (RuntimeError, ValueError, NotImplementedError) as exc2:
                raise EngineError(f"Paddle cannot run {folder.network}: {exc2}") from None
        self.outputs = outputs
        self.inputs = [TensorInfo(t.name, (-1, *t.shape[1:]), t.dtype) for t in declared]

    # ------------------------------------------------------------------ building

    def _config(self, *, tensorrt: bool = True):
        inference = _import_paddle().inference

        config = inference.Config(str(self.folder.network), str(self.folder.weights))
        config.disable_glog_info()
        if self.folder.format == "paddle":
            # Paddle 3.3 fails PIR (model.json) programs with "Not find ... memory_optimize_pass"
            config.enable_memory_optim()
        config.switch_ir_optim(True)
        if self._device == "cpu":
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(self._threads or os.cpu_count() or 1)
            if self._onednn:
                config.set_mkldnn_cache_capacity(self.max_batch)  # one oneDNN kernel set per input shape
                config.enable_mkldnn()
            else:
                config.disable_mkldnn()
            return config
        config.enable_use_gpu(256, 0)
        if tensorrt and self._precision != "fp32":
            precision = {"fp16": inference.PrecisionType.Half, "int8": inference.PrecisionType.Int8}[self._precision]
            config.set_optim_cache_dir(str(self._cache))
            config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=self.max_batch,
                                          min_subgraph_size=self.folder.config.min_subgraph_size,
                                          precision_mode=precision, use_static=True,
                                          use_calib_mode=self._precision == "int8")
            config.enable_tuned_tensorrt_dynamic_shape(str(self._shape_file), True)
        return config

    @property
    def _shape_file(self) -> Path:
        return self._cache / "shape_range_info.pbtxt"

    def _prepare_tensorrt(self, calib_dir: Path) -> None:
        """Collect the input shape range once (batch 1 and max_batch), and for int8 calibrate,
        so that TensorRT builds its engines for the shapes the stages will feed."""
        from paddle import inference

        self._cache.mkdir(parents=True, exist_ok=True)
        if not self._shape_file.is_file():
            config = self._config(tensorrt=False)
            config.collect_shape_range_info(str(self._shape_file))
            predictor = inference.create_predictor(config)
            for batch in sorted({1, self.max_batch}):
                _run_predictor(predictor, {t.name: np.zeros((batch, *t.shape[1:]), t.dtype) for t in self.inputs})
            del predictor  # the shape file is written when the predictor goes
            log.info("%s: collected TensorRT shape ranges into %s", self.folder.name, self._shape_file)
        if self._precision == "int8" and not any(self._cache.rglob("trt_calib_*")):
            feeds = calibration_feeds(calib_dir, self.folder.config, self.inputs)
            predictor = inference.create_predictor(self._config())
            for feed in feeds:
                _run_predictor(predictor, feed)
            del predictor  # the calibration table is written when the predictor goes
            log.info("%s: TensorRT int8 calibrated on %d images from %s", self.folder.name, len(feeds), calib_dir)

    def _create_and_probe(self) -> list[TensorInfo]:
        from paddle import inference

        self._predictor = inference.create_predictor(self._config())
        outputs, batch_capable = probe(self._run, self.inputs, self.batch_capable, self.folder.config.input_size)
        if self.max_batch > 1 and not batch_capable:
            log.info("%s: the network's batch is fixed at 1; batches run one image at a time", self.folder.name)
        self.batch_capable = batch_capable
        return outputs

    # ------------------------------------------------------------------ running

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _run_predictor(self._predictor, feed)

    def close(self) -> None:
        self._predictor = None


def _run_predictor(predictor, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for name, value in feed.items():
        handle = predictor.get_input_handle(name)
        handle.reshape(value.shape)
        handle.copy_from_cpu(np.ascontiguousarray(value))
    predictor.run()
    return {name: predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names()}


def _declared_inputs(folder: ModelFolder) -> list[TensorInfo]:
    """The network's inputs as its program declares them (-1 where dynamic). Shapes are needed
    before running, to probe the network; Paddle Inference only knows them after a run."""
    try:
        if folder.format == "paddle":
            return _legacy_inputs(folder.network)
        return _pir_inputs(folder.network)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise EngineError(f"cannot read the inputs of {folder.network}: {exc}") from None


def _legacy_inputs(path: Path) -> list[TensorInfo]:
    from paddle.base.proto import framework_pb2

    program = framework_pb2.ProgramDesc()
    program.ParseFromString(path.read_bytes())
    block = program.blocks[0]
    variables = {v.name: v for v in block.vars}
    feeds = sorted((op for op in block.ops if op.type == "feed"),
                   key=lambda op: next(a.i for a in op.attrs if a.name == "col"))
    inputs = []
    for op in feeds:
        name = op.outputs[0].arguments[0]
        tensor = variables[name].type.dense_tensor.tensor
        inputs.append(TensorInfo(name, tuple(int(d) for d in tensor.dims), np.dtype(_LEGACY_DTYPES[tensor.data_type])))
    if not inputs:
        raise ValueError("the program has no feed ops")
    return inputs


def _pir_inputs(path: Path) -> list[TensorInfo]:
    program = json.loads(path.read_text(encoding="utf-8"))
    ops = program["program"]["regions"][0]["blocks"][0]["ops"]
    inputs = []
    for op in ops:
        if op["#"].split(".")[-1] not in ("data", "feed"):
            continue
        name = next(a["AT"]["D"] for a in op["A"] if a["N"] == "name")
        dtype_name, shape = op["O"][0]["TT"]["D"][0]["#"].split(".")[-1], op["O"][0]["TT"]["D"][1]
        inputs.append(TensorInfo(name, tuple(int(d) for d in shape), np.dtype(_PIR_DTYPES[dtype_name])))
    if not inputs:
        raise ValueError("the program has no data ops")
    return inputs


def calibration_feeds(calib_dir: Path, config: InferConfig, inputs: list[TensorInfo],
                      limit: int = 200) -> list[dict[str, np.ndarray]]:
    """Feeds for int8 calibration: up to `limit` images from `calib_dir`, each resized to the
    network input and normalized as infer_cfg.yml says (whole images; for top-down keypoint
    models the images should be person crops)."""
    if len(inputs) != 1:
        raise EngineError(f"int8 calibration feeds single-input networks; this one takes {[t.name for t in inputs]}")
    files = sorted(p for p in calib_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise EngineError(f"int8 calibration needs images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {calib_dir}; "
                          "none found")
    image_input = inputs[0]
    height, width = image_input.shape[2:4]
    if height < 0 or width < 0:
        height, width = config.input_size or (height, width)
    normalize = config.op("NormalizeImage")
    feeds = []
    for file in files:
        image = cv2.imread(str(file))
        if image is None:
            raise EngineError(f"cannot decode calibration image {file}")
        if config.channel_order == "RGB":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        if normalize is not None:
            params = normalize.params
            if params.get("is_scale", True):
                image /= 255.0
            if params.get("norm_type", "mean_std") == "mean_std":
                image = (image - np.float32(params["mean"])) / np.float32(params["std"])
        feeds.append({image_input.name: image.transpose(2, 0, 1)[None].astype(image_input.dtype)})
    return feeds
