"""Train the 2D->3D lifter on motion capture and export it as a model folder.

    python -m trainers.lifter.train --out ~/.cache/streampose/models/lifter_coco17

Reads the BVH clips of the chosen collections (default: the CMU clips, whose terms allow
commercial use; adding bandai_namco makes the model non-commercial), holds out whole clips for
validation, trains on batches drawn afresh at every step (trainers.lifter.synth), reports MPJPE,
PA-MPJPE and root-depth error per held-out clip, and writes the model folder with its settings
(train_config.yml) and results (metrics.yml).
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streampose.frame import COCO_KEYPOINTS
from streampose.geometry.lifting import STATURE_RATIO, place_by_height, root_of, to_camera
from trainers.common.config import add_arguments, from_arguments
from trainers.common.yaml_config import config_record
from trainers.lifter.metrics import mpjpe, pa_mpjpe
from trainers.lifter.mocap import COLLECTIONS, Clip, find_clips, load_clip
from trainers.lifter.synth import CLEAN, Batch, Cameras, Sampler

log = logging.getLogger("trainers.lifter")

_SHARED = Path(os.environ.get("STREAMPOSE_SHARED", "../shared"))
# Validation samples per held-out clip and condition.
VALIDATION_SAMPLES = 2000
# Joints at least this confident place the root in the depth evaluation (as the stage does).
PLACEMENT_CONFIDENCE = 0.3


@dataclass(frozen=True)
class TrainConfig:
    out: Path = field(default=Path("~/.cache/streampose/models/lifter_coco17"),
                      metadata={"help": "model folder to write (replaced)"})
    mocap: Path = field(default=_SHARED / "mocap", metadata={"help": "the motion capture folder"})
    collections: tuple[str, ...] = field(default=("cmu_cgspeed_mb", "cmu_iclone_cc", "cmu_daz_scaled"),
                                         metadata={"help": f"mocap collections to use ({', '.join(COLLECTIONS)})"})
    validation: tuple[str, ...] = field(
        default=("cmu_iclone_cc/006_14", "cmu_iclone_cc/007_12", "cmu_daz_scaled/61_01_scaled"),
        metadata={"help": "clips held out for validation, <collection>/<file stem>"})
    window: int = field(default=3, metadata={"help": "2D poses per input"})
    width: int = field(default=512, metadata={"help": "features per hidden layer"})
    blocks: int = field(default=1, metadata={"help": "residual blocks (2 crash OpenVINO 2026.4 on CPU, see model.py)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout rate"})
    steps: int = field(default=8000, metadata={"help": "training steps"})
    batch: int = field(default=256, metadata={"help": "samples per step"})
    learning_rate: float = field(default=2e-3, metadata={"help": "peak learning rate (cosine decay to 0)"})
    seed: int = field(default=0, metadata={"help": "random seed of sampling and initialisation"})
    threads: int = field(default=1, metadata={"help": "Paddle CPU threads (1 is fastest on a busy 2-core "
                                                      "machine; batches are drawn on another thread)"})
    log_every: int = field(default=500, metadata={"help": "steps between progress lines"})


def load_clips(config: TrainConfig) -> tuple[list[Clip], list[Clip]]:
    """(training clips, validation clips)."""
    clips = [load_clip(path, config.mocap) for path in find_clips(config.mocap, list(config.collections))]
    names = {c.name for c in clips}
    missing = sorted(set(config.validation) - names)
    if missing:
        raise SystemExit(f"validation clip(s) {missing} not among the clips read: {', '.join(sorted(names))}")
    train = [c for c in clips if c.name not in config.validation]
    validation = [c for c in clips if c.name in config.validation]
    if not train:
        raise SystemExit("every clip is held out for validation; nothing left to train on")
    return train, validation


def train(config: TrainConfig) -> dict:
    """Train, evaluate and export; returns the metrics written to metrics.yml."""
    with warnings.catch_warnings():  # paddle warns about ccache (for building extensions) on import
        warnings.filterwarnings("ignore", message="No ccache found")
        import paddle

    from trainers.common.export import export_model_folder
    from trainers.lifter.model import PoseLifter

    started = time.time()
    train_clips, validation_clips = load_clips(config)
    log.info("training on %d clips (%.0f s of motion), validating on %s", len(train_clips),
             sum(c.duration for c in train_clips), ", ".join(c.name for c in validation_clips))
    sampler = Sampler(train_clips, config.window, seed=config.seed)
    paddle.seed(config.seed)
    paddle.base.core.set_num_threads(config.threads)
    kwargs = dict(window=config.window, joints=len(COCO_KEYPOINTS), width=config.width, blocks=config.blocks,
                  dropout=config.dropout)
    network = PoseLifter(**kwargs)
    schedule = paddle.optimizer.lr.CosineAnnealingDecay(config.learning_rate, config.steps)
    optimiser = paddle.optimizer.Adam(learning_rate=schedule, parameters=network.parameters())
    monitor = Sampler(validation_clips, config.window, seed=config.seed + 1).batch(VALIDATION_SAMPLES)
    for step, batch in enumerate(_drawn(sampler, config.batch, config.steps), start=1):
        predicted = network(paddle.to_tensor(batch.inputs))
        loss = paddle.linalg.norm(predicted - paddle.to_tensor(batch.targets), axis=-1).mean()
        loss.backward()
        optimiser.step()
        optimiser.clear_grad()
        schedule.step()
        if step % config.log_every == 0 or step == config.steps:
            errors = evaluate(lambda x: _predict(network, x), monitor)
            log.info("step %d/%d: loss %.3f, held-out MPJPE %.0f mm, PA-MPJPE %.0f mm (%.0f s)", step, config.steps,
                     float(loss), errors["mpjpe_mm"], errors["pa_mpjpe_mm"], time.time() - started)
    training_s = time.time() - started

    metrics = {"training_s": round(training_s), "validation": validation_table(
        lambda x: _predict(network, x), validation_clips, config)}
    network.eval()
    infer_cfg = {
        "arch": "PoseLifter",
        "window": config.window,
        "stature_ratio": STATURE_RATIO,
        "label_list": list(COCO_KEYPOINTS),
        "input": "normalised 2D poses, streampose.geometry.lifting.normalise_pose2d, (N, window, 17, 3)",
        "output": "root-relative 3D joints of the last pose, its virtual camera's axes, skeleton lengths, (N, 17, 3)",
        "terms": sorted({c.terms for c in train_clips}),
    }
    probe = monitor.inputs[:8]
    out = Path(config.out).expanduser()
    export_model_folder(network, "trainers.lifter.model:PoseLifter", kwargs,
                        {"keypoints": (-1, config.window, len(COCO_KEYPOINTS), 3)}, out, infer_cfg, probe,
                        {"train_config.yml": config_record(config), "metrics.yml": metrics})
    log.info("wrote %s in %.0f s", out, time.time() - started)
    return metrics


def _drawn(sampler: Sampler, size: int, count: int) -> Iterator[Batch]:
    """`count` batches drawn on a background thread, so that drawing overlaps training."""
    ready: queue.Queue = queue.Queue(maxsize=4)

    def draw():
        try:
            for _ in range(count):
                ready.put(sampler.batch(size))
        except Exception as exc:  # handed to the training thread, which raises it
            ready.put(exc)

    threading.Thread(target=draw, name="draw-batches", daemon=True).start()
    for _ in range(count):
        batch = ready.get()
        if isinstance(batch, Exception):
            raise batch
        yield batch


def _predict(network, inputs: np.ndarray) -> np.ndarray:
    import paddle

    network.eval()
    with paddle.no_grad():
        out = network(paddle.to_tensor(inputs)).numpy()
    network.train()
    return out


def evaluate(predict, batch: Batch) -> dict:
    """Errors of `predict` (inputs -> root-relative skeleton lengths) on a batch, persons of their
    true height: MPJPE and PA-MPJPE in mm, and the median relative error of the root depth
    placed from the height (as the lift3d stage places it)."""
    metres = (batch.stature * STATURE_RATIO)[:, None, None]
    predicted = predict(batch.inputs) * metres
    true = batch.targets * metres
    last_rays, last_confidence = batch.rays[:, -1], batch.confidence[:, -1]
    weights = np.where(last_confidence >= PLACEMENT_CONFIDENCE, last_confidence, 0.0)
    roots = place_by_height(last_rays, weights, to_camera(batch.rotation, predicted.astype(np.float64)))
    true_depth = root_of(batch.camera_points)[:, 2]
    return {"mpjpe_mm": float(mpjpe(predicted, true).mean() * 1000),
            "pa_mpjpe_mm": float(pa_mpjpe(predicted, true).mean() * 1000),
            "root_depth_error": float(np.median(np.abs(roots[:, 2] / true_depth - 1)))}


def validation_table(predict, clips: list[Clip], config: TrainConfig) -> list[dict]:
    """Per held-out clip: exact 2D of the whole body, and 2D spoiled like a detector's (noise,
    lost joints, persons partly out of the image)."""
    rows = []
    conditions = (("exact 2D", {"detector": CLEAN, "cameras": Cameras(truncation=0.0)}), ("detector-like 2D", {}))
    for index, clip in enumerate(clips):
        for condition, options in conditions:
            sampler = Sampler([clip], config.window, seed=1000 + index, **options)
            errors = evaluate(predict, sampler.batch(VALIDATION_SAMPLES))
            rows.append({"clip": clip.name, "input": condition,
                         **{k: round(v, 3 if k == "root_depth_error" else 1) for k, v in errors.items()}})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.lifter.train", description=__doc__.split("\n\n")[0])
    add_arguments(parser, TrainConfig)
    config = from_arguments(TrainConfig, parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    metrics = train(config)
    print(f"{'clip':<30} {'input':<18} {'MPJPE mm':>9} {'PA-MPJPE mm':>12} {'root depth err':>15}")
    for row in metrics["validation"]:
        print(f"{row['clip']:<30} {row['input']:<18} {row['mpjpe_mm']:>9.0f} {row['pa_mpjpe_mm']:>12.0f} "
              f"{row['root_depth_error']:>14.1%}")
    print(f"trained in {metrics['training_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
