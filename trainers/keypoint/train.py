"""Train or fine-tune a top-down keypoint network on a COCO keypoint set.

    python -m trainers.keypoint.train CONFIG.yml --run-dir runs/NAME [--set schedule.epochs=5]
        [--resume] [--export ~/.cache/streampose/models/NAME]

The run folder receives:
    config.yml      the settings used
    log.jsonl       a "train" record every schedule.log_every steps (loss, lr, images/s) and an
                    "eval" record per validation (OKS AP... on the held-out set; epoch 0 is the
                    starting network)
    last.pdckpt     the latest checkpoint (each validation), for --resume
    best.pdckpt     the checkpoint of the best held-out AP (the starting network included)
    metrics.yml     AP before, best and last; timing
    curves.png      loss and AP curves (python -m trainers.common.plot draws it again)
With --export, best.pdckpt is exported (python -m trainers.export model) to the given folder.

Steps: Adam or AdamW, linear warm-up then cosine or step decay (per step), loss = joint-
weighted MSE between predicted and target heatmaps (PaddleDetection's KeyPointMSELoss), float16
autocast on a GPU, an EMA of the weights that is what gets validated and exported.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from trainers.common.checkpoint import deployable_weights, load_checkpoint, save_checkpoint
from trainers.common.export import child_env
from trainers.common.runlog import RunLog
from trainers.common.yaml_config import ConfigError, config_record, load_yaml_config
from trainers.keypoint.coco import DatasetError, KeypointSamples, load_coco_keypoints
from trainers.keypoint.config import TrainConfig
from trainers.keypoint.models import heatmap_shape

log = logging.getLogger("trainers.keypoint")

BUILDER = "trainers.keypoint.models:build_network"
PLOTTED_METRICS = ("AP", "AP50", "AP75", "AR")
# Crops on which the batch-norm statistics of imported IR weights are measured.
CALIBRATION_CROPS = 64


def train(config: TrainConfig, run_dir: Path, resume: bool = False) -> dict:
    """Train per `config` into `run_dir`; returns the metrics written to metrics.yml."""
    import paddle

    # Fresh parameter and optimiser-state names, so that a checkpoint's optimiser state (keyed by
    # them) fits again in any process, however many networks it built before.
    with paddle.utils.unique_name.guard():
        return _train(config, run_dir, resume)


def _train(config: TrainConfig, run_dir: Path, resume: bool) -> dict:
    import paddle
    from tqdm import tqdm

    from trainers.common.ema import ModelEMA
    from trainers.keypoint.data import TrainingSamples
    from trainers.keypoint.evaluate import evaluate, layer_estimator
    from trainers.keypoint.models import build_network

    run_dir = Path(run_dir)
    last_path, best_path = run_dir / "last.pdckpt", run_dir / "best.pdckpt"
    if not resume and last_path.exists():
        raise SystemExit(f"{run_dir} already holds a run (last.pdckpt); use --resume to continue it, or another "
                         "--run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yml").write_text(yaml.safe_dump(config_record(config), sort_keys=False), encoding="utf-8")
    use_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    paddle.set_device("gpu" if use_gpu else "cpu")
    use_amp = use_gpu and config.schedule.amp
    paddle.seed(config.schedule.seed)

    names = config.keypoints.names
    train_set = load_coco_keypoints(config.data.train_annotations, config.data.train_images, names,
                                    config.data.min_keypoints)
    val_set = load_coco_keypoints(config.data.val_annotations, config.data.val_images, names,
                                  config.data.min_keypoints)
    log.info("training on %d persons in %d images, validating on %d persons in %d images (%s, %s)",
             len(train_set), len(train_set.image_files), len(val_set), len(val_set.image_files),
             "GPU" + (" with AMP" if use_amp else "") if use_gpu else "CPU", config.model.arch)

    kwargs = config.model.builder_kwargs(config.input_size, config.keypoints.num_joints)
    network = build_network(**kwargs)
    _check_output(network, config)
    samples = TrainingSamples(train_set, config)
    schedule = config.schedule
    steps_per_epoch = math.ceil(len(samples) / schedule.batch_size)
    total_steps = schedule.epochs * steps_per_epoch
    if schedule.max_steps:
        total_steps = min(total_steps, schedule.max_steps)
    scheduler = _lr_schedule(config, steps_per_epoch, total_steps)
    optimiser_class = paddle.optimizer.AdamW if schedule.optimizer == "adamw" else paddle.optimizer.Adam
    optimiser = optimiser_class(learning_rate=scheduler, parameters=network.parameters(),
                                **({"weight_decay": schedule.weight_decay} if schedule.optimizer == "adamw" else {}))
    scaler = paddle.amp.GradScaler(init_loss_scaling=1024) if use_amp else None

    epoch, step, best = 0, 0, {"AP": -1.0}
    if resume:
        state = load_checkpoint(last_path)
        network.set_state_dict(state["model"])
        optimiser.set_state_dict(state["optimizer"])
        epoch, step, best = state["epoch"], state["step"], state["best"]
        log.info("resumed %s at epoch %d, step %d (best AP %.3f)", last_path, epoch, step, best["AP"])
    else:
        _initialise(network, config, train_set)
    ema = ModelEMA(network, schedule.ema_decay) if schedule.ema_decay > 0 else None
    if resume and ema is not None and state.get("ema"):
        ema.set_state_dict(state["ema"])

    def checkpoint(metrics: dict) -> dict:
        return {"builder": BUILDER, "builder_kwargs": kwargs,
                "inputs": {"image": [-1, 3, config.input_size[1], config.input_size[0]]},
                "infer_cfg": config.infer_cfg, "config": config_record(config), "metrics": metrics,
                "model": network.state_dict(), "ema": ema.state_dict() if ema else None,
                "optimizer": optimiser.state_dict(), "epoch": epoch, "step": step, "best": best}

    def validate() -> dict:
        network.eval()
        try:
            with ema.applied(network) if ema else contextlib.nullcontext():
                return evaluate(layer_estimator(network, config), val_set, config.keypoints.sigmas)
        finally:
            _training_mode(network, config)

    run_log = RunLog(run_dir / "log.jsonl")
    started = time.time()
    if not resume:
        # The starting network competes for best.pdckpt too: a fine-tune that never beats it
        # exports it unchanged.
        before = validate()
        run_log.write("eval", step=0, epoch=0, **before)
        best = {**before, "epoch": 0, "step": 0}
        save_checkpoint(best_path, checkpoint(before))
        log.info("before training: held-out AP %.3f", before["AP"])
    loader = paddle.io.DataLoader(samples, batch_size=schedule.batch_size, shuffle=True, drop_last=False,
                                  num_workers=config.data.workers)
    train_seconds, session_steps, window_loss, window_count = 0.0, 0, 0.0, 0
    metrics = {}
    _training_mode(network, config)
    while epoch < schedule.epochs and step < total_steps:
        samples.set_epoch(epoch)
        np.random.seed([schedule.seed, epoch])  # the loader shuffles with numpy's global generator
        bar = tqdm(total=min(steps_per_epoch, total_steps - step), desc=f"epoch {epoch + 1}/{schedule.epochs}",
                   unit="step", dynamic_ncols=True, disable=None)
        tick = time.perf_counter()
        for images, heatmaps, weights in loader:
            with paddle.amp.auto_cast(enable=use_amp):
                predicted = network(images)
            loss = heatmap_loss(predicted.astype("float32"), heatmaps, weights)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
            else:
                loss.backward()
                optimiser.step()
            optimiser.clear_grad()
            scheduler.step()
            if ema is not None:
                ema.update(network)
            step += 1
            session_steps += 1
            value = float(loss)
            window_loss, window_count = window_loss + value, window_count + 1
            elapsed = time.perf_counter() - tick
            train_seconds += elapsed
            bar.update()
            bar.set_postfix(loss=f"{value:.2e}", img_s=f"{len(images) / elapsed:.1f}")
            if step % schedule.log_every == 0 or step == total_steps:
                run_log.write("train", step=step, epoch=epoch + 1, loss=window_loss / window_count,
                              lr=optimiser.get_lr(), images_per_s=len(images) / elapsed)
                window_loss, window_count = 0.0, 0
            tick = time.perf_counter()
            if step >= total_steps:
                break
        bar.close()
        epoch += 1
        if epoch % schedule.eval_every == 0 or epoch == schedule.epochs or step >= total_steps:
            metrics = validate()
            run_log.write("eval", step=step, epoch=epoch, **metrics)
            improved = metrics["AP"] > best["AP"]
            if improved:
                best = {**metrics, "epoch": epoch, "step": step}
            save_checkpoint(last_path, checkpoint(metrics))
            if improved:
                save_checkpoint(best_path, checkpoint(metrics))
            log.info("epoch %d, step %d: held-out AP %.3f (best %.3f at epoch %d)", epoch, step, metrics["AP"],
                     best["AP"], best["epoch"])
    run_log.close()

    from trainers.common.plot import plot_run
    from trainers.common.runlog import read_log

    records = read_log(run_dir / "log.jsonl")
    evals = [r for r in records if r["kind"] == "eval"]
    summary = {
        "ap_before": evals[0]["AP"] if evals else None,
        "best": best,
        "last": metrics,
        "steps": step,
        "seconds_per_step": round(train_seconds / max(1, session_steps), 3),
        "wall_seconds": round(time.time() - started),
        "device": "gpu" if use_gpu else "cpu",
    }
    (run_dir / "metrics.yml").write_text(yaml.safe_dump(summary, sort_keys=False), encoding="utf-8")
    plot_run(run_dir / "log.jsonl", run_dir / "curves.png", title=f"{run_dir.name} ({config.model.arch})",
             metrics=PLOTTED_METRICS)
    return summary


def heatmap_loss(predicted, target, weights):
    """0.5 x mean over batch, joints and pixels of (weight x (predicted - target))^2."""
    return 0.5 * ((predicted - target) * weights.unsqueeze([2, 3])).square().mean()


def _training_mode(network, config: TrainConfig) -> None:
    """Training mode, batch norms excepted with model.freeze_norm."""
    from paddle import nn

    network.train()
    if config.model.freeze_norm:
        for layer in network.sublayers():
            if isinstance(layer, nn.BatchNorm2D):
                layer.eval()


def _lr_schedule(config: TrainConfig, steps_per_epoch: int, total_steps: int):
    """Per-step learning rate: linear warm-up, then cosine to 0 at total_steps or piecewise decay."""
    import paddle

    s = config.schedule
    warmup = min(s.warmup_steps, max(0, total_steps - 1))
    if s.decay == "cosine":
        after = paddle.optimizer.lr.CosineAnnealingDecay(s.base_lr, T_max=max(1, total_steps - warmup))
    else:
        boundaries = [max(1, m * steps_per_epoch - warmup) for m in s.milestones]
        after = paddle.optimizer.lr.PiecewiseDecay(boundaries, [s.base_lr * s.gamma ** i
                                                                for i in range(len(boundaries) + 1)])
    if warmup == 0:
        return after
    return paddle.optimizer.lr.LinearWarmup(after, warmup, s.base_lr * s.warmup_start_factor, s.base_lr)


def _check_output(network, config: TrainConfig) -> None:
    import paddle

    width, height = config.input_size
    network.eval()
    with paddle.no_grad():
        shape = tuple(network(paddle.zeros([1, 3, height, width])).shape[1:])
    expected = heatmap_shape(config.input_size, config.keypoints.num_joints)
    if shape != expected:
        raise SystemExit(f"the {config.model.arch} network makes heatmaps {list(shape)} for a {width}x{height} input, "
                         f"the settings expect {list(expected)} (num_joints, heatmap height, width)")


def _initialise(network, config: TrainConfig, train_set: KeypointSamples) -> None:
    """Load config.model.init into the network (nothing to do for random weights)."""
    import paddle

    path = config.model.init
    if path is None:
        log.info("starting from random weights")
        return
    if path.suffix == ".xml":
        if config.model.arch != "tinypose":
            raise SystemExit(f"model.init {path}: OpenVINO IR weights can only be imported into arch tinypose")
        from trainers.keypoint.data import plain_crops
        from trainers.keypoint.import_ir import load_ir_weights

        report = load_ir_weights(network, path, calibration_crops=plain_crops(train_set, config, CALIBRATION_CROPS))
        log.info("imported %d convs and %d batch norms from %s (%s weights; batch-norm statistics from %d crops)",
                 report.convs, report.batch_norms, path, report.weight_dtype, report.calibration_crops)
    elif path.suffix in (".pdparams", ".pdckpt"):
        if not path.is_file():
            raise SystemExit(f"model.init {path}: no such file")
        state = deployable_weights(load_checkpoint(path)) if path.suffix == ".pdckpt" else paddle.load(str(path))
        missing, unexpected = network.set_state_dict(state)
        if missing or unexpected:
            raise SystemExit(f"model.init {path} does not fit the {config.model.arch} network: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}")
        log.info("starting from %s", path)
    else:
        raise SystemExit(f"model.init {path}: expected an OpenVINO IR .xml, a .pdparams or a .pdckpt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.keypoint.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="settings YAML (trainers/keypoint/configs/)")
    parser.add_argument("--run-dir", type=Path, required=True, help="folder for checkpoints, logs and curves")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set schedule.epochs=5 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from last.pdckpt")
    parser.add_argument("--export", type=Path, metavar="DIR", help="afterwards export best.pdckpt to this model folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        config = load_yaml_config(TrainConfig, args.config, args.overrides)
        summary = train(config, args.run_dir, args.resume)
    except (ConfigError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(summary, sort_keys=False), end="")
    if args.export:
        # A process of its own: a fresh paddle, and the training's memory given back first.
        return subprocess.call([sys.executable, "-m", "trainers.export", "model", str(args.run_dir / "best.pdckpt"),
                                "--out", str(args.export)], env=child_env())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
