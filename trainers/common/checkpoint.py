"""Training checkpoints that say how to rebuild their network, so that one exporter
(trainers.export) serves every trainer.

A checkpoint is one `paddle.save` file (.pdckpt) of a mapping:

    builder         "package.module:callable" that makes the untrained network
    builder_kwargs  its JSON-compatible arguments
    inputs          input name -> shape, -1 for the batch (float32), in forward's order
    infer_cfg       the infer_cfg.yml mapping the model folder gets
    config          the run's settings (written to the folder as train_config.yml)
    metrics         the latest validation (metrics.yml)
    model           the network's state dict
    ema             averaged weights {"updates", "decay", "shadow": state dict} or None
    optimizer, epoch, step, best    for resuming

`deployable_weights` gives what is exported: the averaged weights where there are any.
"""

from __future__ import annotations

import os
from pathlib import Path

REQUIRED_KEYS = ("builder", "builder_kwargs", "inputs", "infer_cfg", "model")


class CheckpointError(ValueError):
    """A file is not a usable checkpoint."""


def save_checkpoint(path: Path, contents: dict) -> Path:
    """Write `contents` to `path` atomically (a crash leaves the previous file whole)."""
    import paddle

    missing = [k for k in REQUIRED_KEYS if k not in contents]
    if missing:
        raise CheckpointError(f"checkpoint for {path} lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    paddle.save(contents, str(partial))
    os.replace(partial, path)
    return path


def load_checkpoint(path: Path) -> dict:
    import paddle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        contents = paddle.load(str(path))
    except Exception as exc:  # paddle.load raises assorted errors for foreign files
        raise CheckpointError(f"{path}: cannot read it as a checkpoint: {exc}") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(contents, dict) or k not in contents]
    if missing:
        raise CheckpointError(f"{path}: not a trainer checkpoint (missing {', '.join(missing)})")
    return contents


def deployable_weights(checkpoint: dict) -> dict:
    """The state dict to export: the EMA's where the run kept one (it holds every float entry,
    integer entries come from the model's), else the model's."""
    ema = checkpoint.get("ema")
    return {**checkpoint["model"], **(ema["shadow"] if ema else {})}


def build_from_checkpoint(checkpoint: dict):
    """The checkpoint's network with its deployable weights, in eval mode."""
    import importlib

    module, _, name = checkpoint["builder"].partition(":")
    layer = getattr(importlib.import_module(module), name)(**checkpoint["builder_kwargs"])
    missing, unexpected = layer.set_state_dict(deployable_weights(checkpoint))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint weights do not fit {checkpoint['builder']}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    layer.eval()
    return layer
