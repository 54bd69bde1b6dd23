"""Engines on the real models: agreement between engines, batching, errors, GPU fallback."""

import logging
import shutil
import warnings

import cv2
import numpy as np
import pytest

from conftest import IMAGES, MODELS
from streampose.engines import (EngineError, EngineUnavailableError, InputShapeError, TensorInfo, auto_precision,
                               load_engine)
from streampose.engines.paddle import calibration_feeds
from streampose.models.folder import find_model, load_model_folder

with warnings.catch_warnings():  # paddle's import warns about ccache
    warnings.simplefilter("ignore")
    import paddle

PICODET = "picodet_s_192_pedestrian"
TINYPOSE = "tinypose_128x96_ov"
YOLOX = "yolox_nano_coco_onnx"
PEOPLE = IMAGES / "four_people_walking_gy_demo_7.jpg"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("engine_cache")


def model(name):
    return find_model(name, [MODELS])


def picodet_input(path=PEOPLE) -> np.ndarray:
    """The image as infer_cfg.yml says: RGB, resize to 192x192 (cubic), ImageNet mean/std, CHW."""
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (192, 192), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
    image = (image - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return image.transpose(2, 0, 1)[None].astype(np.float32)


def yolox_input(path=PEOPLE) -> np.ndarray:
    """BGR 0-255, letterboxed to the top-left of a 416x416 canvas filled with 114."""
    image = cv2.imread(str(path))
    scale = min(416 / image.shape[0], 416 / image.shape[1])
    resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))
    canvas = np.full((416, 416, 3), 114, np.uint8)
    canvas[:resized.shape[0], :resized.shape[1]] = resized
    return canvas.transpose(2, 0, 1)[None].astype(np.float32)


def test_openvino_and_paddle_agree_on_picodet(cache):
    folder = model(PICODET)
    ov_engine = load_engine(folder, engine="openvino", precision="fp32", threads=2, cache_dir=cache)
    pd_engine = load_engine(folder, engine="paddle", threads=2, cache_dir=cache)
    assert (ov_engine.name, pd_engine.name) == ("openvino", "paddle")
    assert [t.name for t in ov_engine.outputs] == [t.name for t in pd_engine.outputs]
    assert [t.shape for t in ov_engine.outputs] == [t.shape for t in pd_engine.outputs]
    feed = {"image": picodet_input()}
    ov_out, pd_out = ov_engine.run(feed), pd_engine.run(feed)
    for name in ov_out:
        np.testing.assert_allclose(ov_out[name], pd_out[name], rtol=1e-4, atol=1e-4, err_msg=name)
    # four people walking: the stride-8..64 score maps (sigmoid) must see them
    best_score = max(float(ov_out[t.name].max()) for t in ov_engine.outputs[:4])
    assert best_score > 0.5


def test_openvino_batch_equals_single_runs(cache):
    engine = load_engine(model(TINYPOSE), engine="openvino", threads=2, max_batch=8, cache_dir=cache)
    assert engine.batch_capable
    image = cv2.cvtColor(cv2.imread(str(PEOPLE)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    width = image.shape[1] // 5
    crops = np.stack([cv2.resize(image[:, i * width:(i + 1) * width], (96, 128)).transpose(2, 0, 1)
                      for i in range(5)])
    batched = engine.run({"image": crops})
    singles = [engine.run({"image": crops[i:i + 1]}) for i in range(5)]
    for name, value in batched.items():
        assert value.shape[0] == 5
        np.testing.assert_allclose(value, np.concatenate([s[name] for s in singles]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(batched["conv2d_441.tmp_1"][0], batched["conv2d_441.tmp_1"][1])
    # results are the caller's: the next run of the same batch size must not overwrite them
    kept = batched["conv2d_441.tmp_1"].copy()
    engine.run({"image": crops[::-1].copy()})
    np.testing.assert_array_equal(batched["conv2d_441.tmp_1"], kept)


def test_parallel_runs_give_what_runs_one_after_the_other_give(cache):
    image = cv2.cvtColor(cv2.imread(str(PEOPLE)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    width = image.shape[1] // 7
    crops = np.stack([cv2.resize(image[:, i * width:(i + 1) * width], (96, 128)).transpose(2, 0, 1)
                      for i in range(7)])
    feeds = [{"image": crops[:4]}, {"image": crops[4:6]}, {"image": crops[6:]}, {"image": crops[:4][::-1].copy()}]
    alone = load_engine(model(TINYPOSE), engine="openvino", threads=1, max_batch=4, cache_dir=cache)
    together = load_engine(model(TINYPOSE), engine="openvino", threads=1, max_batch=4, cache_dir=cache, parallel=2)
    assert (alone.parallel, together.parallel) == (1, 2)
    expected = [alone.run(feed) for feed in feeds]
    # Two runs of the same batch size at once (the first and the last) each have their own
    # request; every result is the caller's copy, in the feeds' order.
    results = together.run_parallel(feeds)
    for got, want in zip(results, expected, strict=True):
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    assert not np.array_equal(results[0]["conv2d_441.tmp_1"], results[3]["conv2d_441.tmp_1"])
    together.run_parallel(feeds[::-1])
    np.testing.assert_array_equal(results[0]["conv2d_441.tmp_1"], expected[0]["conv2d_441.tmp_1"])


@pytest.mark.parametrize("name", [PICODET, YOLOX])
def test_networks_with_a_fixed_batch_run_image_by_image(name, cache):
    # these exports fix the batch inside the graph (a reshape to [1, ...]); reshaping them to a
    # batch fails or silently folds the batch, so the engine must notice and loop
    engine = load_engine(model(name), engine="openvino", threads=2, max_batch=3, cache_dir=cache)
    assert not engine.batch_capable
    feed = {t.name: np.random.default_rng(1).random((3, *t.shape[1:]), np.float32) for t in engine.inputs}
    result = engine.run(feed)
    assert all(value.shape[0] == 3 for value in result.values())
    first = engine.run({k: v[2:3] for k, v in feed.items()})
    for key, value in first.items():
        np.testing.assert_allclose(result[key][2:3], value, rtol=1e-5, atol=1e-5)


def test_onnxruntime_runs_yolox_like_openvino(cache):
    folder = model(YOLOX)
    ort_engine = load_engine(folder, engine="onnxruntime", threads=2, cache_dir=cache)
    ov_engine = load_engine(folder, engine="openvino", precision="fp32", threads=2, cache_dir=cache)
    feed = {"images": yolox_input()}
    out = ort_engine.run(feed)["output"]
    assert out.shape == (1, 3549, 85)
    np.testing.assert_allclose(out, ov_engine.run(feed)["output"], rtol=1e-3, atol=1e-3)
    person = out[0, :, 4] * out[0, :, 5]  # objectness x person class
    assert (person > 0.5).sum() >= 4


def test_paddle3_json_model(tmp_path, cache):
    # a Paddle 3 (PIR, model.json) copy of the real PicoDet, written by Paddle Inference itself
    from paddle import inference

    source = model(PICODET)
    config = inference.Config(str(source.network), str(source.weights))
    config.disable_gpu()
    config.disable_mkldnn()
    config.switch_ir_optim(False)
    config.enable_new_ir(True)
    config.set_optim_cache_dir(str(tmp_path / "opt"))
    config.enable_save_optim_model(True)
    inference.create_predictor(config)
    folder_path = tmp_path / "picodet_pir"
    folder_path.mkdir()
    shutil.copy(tmp_path / "opt" / "_optimized.json", folder_path / "model.json")
    shutil.copy(tmp_path / "opt" / "_optimized.pdiparams", folder_path / "model.pdiparams")
    shutil.copy(source.path / "infer_cfg.yml", folder_path / "infer_cfg.yml")

    folder = load_model_folder(folder_path)
    assert folder.format == "paddle3"
    engine = load_engine(folder, threads=2, cache_dir=cache)
    assert engine.name == "paddle"  # OpenVINO cannot read PIR json; auto must pick Paddle
    assert [t.shape for t in engine.inputs] == [(-1, 3, 192, 192)]
    reference = load_engine(source, engine="openvino", precision="fp32", threads=2, cache_dir=cache)
    feed = {"image": picodet_input()}
    expected = reference.run(feed)
    for name, value in engine.run(feed).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=1e-4)


def test_openvino_output_names_survive_compilation():
    # Compiling fuses each output with the layer before it, and the fused output carries both
    # tensors' names (here 'save_infer_model/scale_0.tmp_1' and 'transpose_10.tmp_0'). OpenVINO
    # 2026.4 then named an exported network's output 'conv2d_35.tmp_0' in the compiled model where
    # the model said 'conv2d_35.tmp_1', and the export check failed with a KeyError. The engine's
    # names must come from the model alone, the same at every batch size.
    import openvino as ov

    folder = model(PICODET)
    core = ov.Core()
    network = core.read_model(str(folder.network))
    compiled = core.compile_model(network, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert any(len(c.get_names()) > len(m.get_names()) for c, m in zip(compiled.outputs, network.outputs))

    engine = load_engine(folder, engine="openvino", precision="fp32", max_batch=3)
    names = [t.name for t in engine.outputs]
    assert names == [min(port.get_names()) for port in network.outputs]
    feed = np.concatenate([picodet_input()] * 3)
    expected = compiled(feed[:1])
    for batch in (1, 2, 3):  # each batch size is its own compiled model
        result = engine.run({"image": feed[:batch]})
        assert list(result) == names
        for i, name in enumerate(names):
            np.testing.assert_allclose(result[name][-1], expected[i][0], rtol=1e-4, atol=1e-4)


def test_wrong_input_shape_is_a_clear_error(cache):
    engine = load_engine(model(TINYPOSE), engine="openvino", threads=2, max_batch=4, cache_dir=cache)
    with pytest.raises(InputShapeError) as err:
        engine.run({"image": np.zeros((1, 3, 192, 192), np.float32)})
    message = str(err.value)
    assert TINYPOSE in message and "'image'" in message
    assert "[N, 3, 128, 96]" in message and "[1, 3, 192, 192]" in message
    with pytest.raises(InputShapeError, match=r"N in 1\.\.4, got \[5, 3, 128, 96\]"):
        engine.run({"image": np.zeros((5, 3, 128, 96), np.float32)})
    with pytest.raises(InputShapeError, match="expected dtype float32, got float64"):
        engine.run({"image": np.zeros((1, 3, 128, 96))})
    with pytest.raises(InputShapeError, match=r"missing \['image'\]; unknown \['x'\]"):
        engine.run({"x": np.zeros((1, 3, 128, 96), np.float32)})


needs_cpu_paddle = pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="this paddle has CUDA")


@needs_cpu_paddle
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_gpu_on_a_cpu_build_falls_back_with_one_line(precision, caplog, cache):
    folder = model(PICODET)
    with caplog.at_level(logging.INFO, logger="streampose.engines"):
        engine = load_engine(folder, engine="paddle", device="gpu", precision=precision, threads=2, cache_dir=cache)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    line = warnings[0].getMessage()
    assert "CPU build" in line and "falling back to paddle on cpu at fp32" in line and PICODET in line
    assert engine.name == "paddle"
    assert engine.run({"image": picodet_input()})["save_infer_model/scale_0.tmp_1"].shape == (1, 576, 1)


@needs_cpu_paddle
def test_gpu_with_fallback_stop_raises(cache):
    with pytest.raises(EngineUnavailableError, match=r"CPU build .*TensorRT fp16 \(fallback: stop\)"):
        load_engine(model(PICODET), engine="paddle", device="gpu", precision="fp16", fallback="stop", cache_dir=cache)


def test_auto_engine_on_gpu_falls_back_to_openvino_on_cpu(caplog, cache):
    with caplog.at_level(logging.WARNING, logger="streampose.engines"):
        engine = load_engine(model(PICODET), device="gpu", threads=2, cache_dir=cache)
    assert engine.name == "openvino"
    assert "falling back to openvino on cpu" in caplog.text


def test_precision_auto_on_a_missing_gpu_falls_back_with_one_line(caplog, cache):
    # auto asks the device for its default precision: a GPU OpenVINO does not find must give the
    # "finds no GPU" fallback line, not an exception from querying it
    from streampose.engines.openvino import available_devices

    if "gpu" in available_devices():
        pytest.skip("OpenVINO finds a GPU here")
    with caplog.at_level(logging.WARNING, logger="streampose.engines"):
        engine = load_engine(model(TINYPOSE), engine="openvino", device="gpu", precision="auto", cache_dir=cache)
    assert (engine.name, engine.precision) == ("openvino", "fp32")
    assert "OpenVINO finds no GPU (it runs on Intel GPUs only); falling back to openvino on cpu at fp32" in caplog.text


@pytest.mark.skipif("CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
                    reason="this onnxruntime has CUDA")
def test_onnxruntime_gpu_missing_provider(caplog, cache):
    with pytest.raises(EngineUnavailableError, match="no TensorrtExecutionProvider.*onnxruntime-gpu"):
        load_engine(model(YOLOX), engine="onnxruntime", device="gpu", precision="fp16", fallback="stop",
                    cache_dir=cache)
    with caplog.at_level(logging.WARNING, logger="streampose.engines"):
        engine = load_engine(model(YOLOX), engine="onnxruntime", device="gpu", threads=2, cache_dir=cache)
    assert engine.name == "onnxruntime" and "no CUDAExecutionProvider" in caplog.text


def test_engine_that_cannot_read_the_format_is_refused(cache):
    with pytest.raises(EngineUnavailableError, match="engine paddle cannot read tinypose_128x96_ov"):
        load_engine(model(TINYPOSE), engine="paddle", cache_dir=cache)


def test_auto_picks_openvino_on_cpu_and_caches_compiled_networks(caplog, tmp_path):
    with caplog.at_level(logging.INFO, logger="streampose.engines"):
        engine = load_engine(model(TINYPOSE), threads=2, cache_dir=tmp_path)
    assert engine.name == "openvino"
    assert "tinypose_128x96_ov: openvino on cpu at fp32" in caplog.text
    assert any((tmp_path / "ov_cache").iterdir())


def test_auto_precision_is_openvinos_own_default(cache):
    # OpenVINO runs bf16 on a CPU with native bf16 when no precision is asked for, and the peer
    # (PaddleDetection's deploy pipeline on OpenVINO) does; asking for f32 there made every call
    # about 1.5x slower. precision auto must give exactly what OpenVINO gives by itself.
    import openvino as ov

    folder = model(TINYPOSE)
    crop = cv2.resize(cv2.imread(str(PEOPLE)), (96, 128)).transpose(2, 0, 1)[None].astype(np.float32) / 255
    core = ov.Core()
    plain = core.compile_model(core.read_model(str(folder.network)), "CPU", {"INFERENCE_NUM_THREADS": 1})
    expected = plain(crop)[0]
    engine = load_engine(folder, engine="openvino", precision="auto", threads=1, cache_dir=cache)
    np.testing.assert_array_equal(engine.run({"image": crop})["conv2d_441.tmp_1"], expected)
    assert auto_precision("openvino", "cpu") == {"bf16": "bf16", "f16": "fp16"}.get(
        core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name(), "fp32")


def test_bf16_where_the_cpu_has_it_and_one_line_where_not(caplog, cache):
    import openvino as ov

    folder = model(PICODET)
    feed = {"image": picodet_input()}
    reference = load_engine(folder, engine="openvino", precision="fp32", threads=2, cache_dir=cache).run(feed)
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        result = load_engine(folder, engine="openvino", precision="bf16", threads=2, cache_dir=cache).run(feed)
        # bf16 keeps 8 bits of mantissa: close, not equal. Measured here: the person scores
        # (sigmoid, the first four outputs) move by at most 0.02, the box-side logits (up to 10)
        # by at most 0.18.
        assert not any(np.array_equal(value, reference[name]) for name, value in result.items())
        for i, name in enumerate(result):
            np.testing.assert_allclose(result[name], reference[name], atol=0.04 if i < 4 else 0.4, err_msg=name)
    else:
        with caplog.at_level(logging.WARNING, logger="streampose.engines"):
            load_engine(folder, engine="openvino", precision="bf16", threads=2, cache_dir=cache)
        assert "does not run bf16 natively" in caplog.text and "falling back to openvino on cpu at fp32" in caplog.text
    with pytest.raises(EngineUnavailableError, match="onnxruntime does not run bf16"):
        load_engine(model(YOLOX), engine="onnxruntime", precision="bf16", fallback="stop", cache_dir=cache)


def test_int8_calibration_feeds_from_an_image_folder(tmp_path):
    folder = model(PICODET)
    inputs = [TensorInfo("image", (-1, 3, 192, 192), np.dtype(np.float32))]
    feeds = calibration_feeds(IMAGES, folder.config, inputs)
    assert len(feeds) == len([p for p in IMAGES.iterdir() if p.suffix == ".jpg"])
    first = feeds[0]["image"]
    assert first.shape == (1, 3, 192, 192) and first.dtype == np.float32
    assert -2.2 < first.min() < 0 < first.max() < 2.7  # ImageNet-normalized pixels
    with pytest.raises(EngineError, match=rf"int8 calibration needs images .* in {tmp_path}; none found"):
        calibration_feeds(tmp_path, folder.config, inputs)
