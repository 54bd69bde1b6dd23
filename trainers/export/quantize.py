"""`python -m trainers.export quantize`: OpenVINO post-training INT8 quantisation with NNCF, and
what it costs in accuracy and gains in speed.

The float32 IR folder (DIR_ov from `model`) is quantised on calibration crops (a folder of
person crops, calib/prepare_crops.py) fed exactly as the paddle engine feeds TensorRT's int8
calibration (streampose.engines.paddle.calibration_feeds: resized to the network input and
normalised as infer_cfg.yml says), into DIR_ov_int8 (the network runs on the CPU engine as
any IR). With a held-out COCO keypoint set, OKS AP of both folders is measured through the
keypoints stage's estimator (trainers.keypoint.evaluate); latency is measured on the openvino
engine for batch 1 and batch 8 (best of LATENCY_RUNS). The comparison is written to DIR_ov_int8/quantization.yml.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from streampose.engines import TensorInfo, load_engine
from streampose.engines.paddle import calibration_feeds
from streampose.models.folder import CONFIG_FILE, load_model_folder
from trainers.common.export import ExportError

# Crops NNCF calibrates on at most (its default subset size).
CALIBRATION_LIMIT = 300
LATENCY_RUNS = 30


def quantize_folder(folder: Path, calib_dir: Path, out: Path | None = None) -> Path:
    """Write the INT8 version of OpenVINO IR folder `folder` to `out` (default: folder + "_int8")."""
    import nncf
    import openvino as ov

    model_folder = load_model_folder(Path(folder))
    if model_folder.format != "openvino":
        raise ExportError(f"{folder}: quantisation needs an OpenVINO IR folder (model.xml), this is "
                          f"{model_folder.format}")
    model = ov.Core().read_model(str(model_folder.network))
    inputs = [TensorInfo(p.get_any_name(), tuple(d.get_length() if d.is_static else -1 for d in p.get_partial_shape()),
                         np.dtype(np.float32)) for p in model.inputs]
    try:
        feeds = calibration_feeds(Path(calib_dir), model_folder.config, inputs, limit=CALIBRATION_LIMIT)
    except Exception as exc:  # EngineError: no images, undecodable image
        raise ExportError(str(exc)) from None
    quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds))
    out = Path(out) if out else model_folder.path.with_name(model_folder.name + "_int8")
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.quantize-", dir=out.parent) as tmp:
        work = Path(tmp) / out.name
        ov.save_model(quantized, str(work / "model.xml"), compress_to_fp16=False)
        for name in (CONFIG_FILE, "train_config.yml"):
            if (model_folder.path / name).is_file():
                shutil.copyfile(model_folder.path / name, work / name)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    return out


def latency_ms(folder: Path, batch: int, threads: int) -> float:
    """Milliseconds of one openvino run of `batch` zero crops through `folder`'s network: the
    fastest of LATENCY_RUNS (as timeit reports), which other load on the machine disturbs least."""
    engine = load_engine(load_model_folder(Path(folder)), engine="openvino", threads=threads, max_batch=batch,
                         fallback="stop")
    feed = {t.name: np.zeros((batch, *t.shape[1:]), t.dtype) for t in engine.inputs}
    engine.run(feed)
    times = []
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        engine.run(feed)
        times.append(time.perf_counter() - started)
    engine.close()
    return round(min(times) * 1000, 2)


def compare(fp32: Path, int8: Path, val_annotations: Path | None, val_images: Path | None, threads: int) -> dict:
    """Accuracy (when a held-out set is given) and latency of the two folders; also written to
    int8/quantization.yml."""
    settings = _training_settings(fp32)
    result = {}
    for name, folder in (("fp32", fp32), ("int8", int8)):
        row = {"folder": str(folder)}
        if val_annotations is not None:
            from trainers.keypoint.coco import load_coco_keypoints
            from trainers.keypoint.evaluate import evaluate, folder_estimator

            samples = load_coco_keypoints(val_annotations, val_images, tuple(settings["keypoints"]["names"]))
            estimator = folder_estimator(folder, settings["data"]["expand_ratio"], engine="openvino", threads=threads,
                                         use_dark=settings["use_dark"])
            stats = evaluate(estimator, samples, tuple(settings["keypoints"]["sigmas"]))
            estimator.engine.close()
            row.update({"AP": stats["AP"], "AP50": stats["AP50"], "AP75": stats["AP75"], "AR": stats["AR"]})
        row.update({"ms_batch1": latency_ms(folder, 1, threads), "ms_batch8": latency_ms(folder, 8, threads)})
        result[name] = row
    result["threads"] = threads
    if val_annotations is not None:
        result["held_out"] = str(val_annotations)
    (Path(int8) / "quantization.yml").write_text(yaml.safe_dump(result, sort_keys=False), encoding="utf-8")
    return result


def _training_settings(folder: Path) -> dict:
    """The folder's train_config.yml, or COCO defaults for what evaluation needs."""
    from trainers.common.yaml_config import config_record
    from trainers.keypoint.config import KeypointSet

    path = Path(folder) / "train_config.yml"
    if path.is_file():
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    return {"keypoints": config_record(KeypointSet()), "data": {"expand_ratio": 0.3}, "use_dark": True}
