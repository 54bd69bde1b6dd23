"""`python -m trainers.export tensorrt`: build and cache TensorRT engines for an exported Paddle
folder ahead of time, so the first graph start on the GPU does not stall building them.

The engines are built exactly as the paddle engine builds them at run time
(streampose.engines.paddle.PaddleEngine: TensorRT subgraphs, tuned dynamic shapes over batch
1..max_batch, int8 calibrated on images from a folder, everything serialised into the cache),
into the cache folder the pipeline reads: <cache>/paddle_trt/<model>-<precision>-b<max_batch>.
A keypoints stage uses max_batch = the largest power of two <= min(32, batch.max_size x
max_persons), twice that with flip_test; with the stage's defaults, 32. The engines are
specific to the GPU model and the TensorRT version they were built with.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from streampose.models.folder import cache_root, load_model_folder


class TensorRTUnavailable(RuntimeError):
    """This machine's paddle cannot build TensorRT engines (the message says why)."""


def build_engines(folder: Path, precisions: tuple[str, ...], max_batch: int, calib_dir: Path,
                  cache_dir: Path | None = None) -> list[str]:
    """Build the engines of `precisions` ("fp16", "int8") for batch 1..max_batch; returns one
    line per precision. Raises TensorRTUnavailable before doing anything where TensorRT is missing."""
    from streampose.engines.paddle import PaddleEngine, unavailable_reason

    for precision in precisions:
        reason = unavailable_reason("gpu", precision)
        if reason is not None:
            raise TensorRTUnavailable(reason)
    model = load_model_folder(Path(folder))
    if model.format not in ("paddle", "paddle3"):
        raise ValueError(f"{folder} holds a {model.format} network; TensorRT engines are built from the Paddle "
                         "folder (the one without a suffix)")
    cache = (cache_dir or cache_root()) / "paddle_trt"
    lines = []
    for precision in precisions:
        started = time.time()
        engine = PaddleEngine(model, device="gpu", precision=precision, max_batch=max_batch, cache_dir=cache,
                              calib_dir=Path(calib_dir))
        for batch in sorted({1, max_batch}):
            engine.run({t.name: np.zeros((batch, *t.shape[1:]), t.dtype) for t in engine.inputs})
        engine.close()
        lines.append(f"tensorrt {precision}: engines for batch 1..{max_batch} in "
                     f"{cache / f'{model.name}-{precision}-b{max_batch}'} ({time.time() - started:.0f} s)")
    return lines
