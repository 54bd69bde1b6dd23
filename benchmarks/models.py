"""Inference latency per model x engine x batch size, on the real models.

    .venv/bin/python benchmarks/models.py [--threads 2] [--batches 1 4 8 16] [--models NAME ...]

Prints, for each combination, the median latency of one `Engine.run` call and the latency per
image. Inputs are random (latency does not depend on the values for these networks). Each
(model, engine) is loaded once with max_batch = the largest batch; the first run of each batch
size (compile, warm-up) is not timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streampose.engines import FORMATS, EngineError, load_engine  # noqa: E402
from streampose.models.folder import default_search_path, find_model  # noqa: E402

SHARED_MODELS = Path(os.environ.get("STREAMPOSE_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "models"
DEFAULT_MODELS = ["picodet_s_192_pedestrian", "picodet_s_192_lcnet_pedestrian_ov", "picodet_s_320_lcnet_pedestrian_ov",
                  "tinypose_128x96_ov", "tinypose_256x192_ov", "yolox_nano_coco_onnx"]


def time_runs(engine, feed, min_runs: int, min_seconds: float) -> float:
    """Median milliseconds of engine.run(feed) over at least min_runs runs and min_seconds."""
    engine.run(feed)
    times: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while len(times) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        engine.run(feed)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--engines", nargs="+", default=["openvino", "paddle", "onnxruntime"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=2, help="inference threads (0 = all cores)")
    parser.add_argument("--runs", type=int, default=10, help="at least this many timed runs per cell")
    parser.add_argument("--seconds", type=float, default=0.5, help="and at least this long per cell")
    args = parser.parse_args()

    search = default_search_path([SHARED_MODELS])
    print(f"threads {args.threads}, median of >= {args.runs} runs and >= {args.seconds} s per cell, "
          f"{os.cpu_count()} CPUs")
    print(f"{'model':<36}{'engine':<13}{'batched':<9}{'batch':>6}{'ms/run':>10}{'ms/image':>10}")
    for name in args.models:
        folder = find_model(name, search)
        for engine_name in args.engines:
            if folder.format not in FORMATS[engine_name]:
                continue
            try:
                engine = load_engine(folder, engine=engine_name, threads=args.threads, max_batch=max(args.batches))
            except EngineError as exc:
                print(f"{name:<36}{engine_name:<13}unavailable: {exc}")
                continue
            rng = np.random.default_rng(0)
            for batch in args.batches:
                feed = {t.name: rng.random((batch, *t.shape[1:])).astype(t.dtype) for t in engine.inputs}
                ms = time_runs(engine, feed, args.runs, args.seconds)
                print(f"{name:<36}{engine_name:<13}{'yes' if engine.batch_capable else 'no':<9}{batch:>6}"
                      f"{ms:>10.2f}{ms / batch:>10.2f}", flush=True)
            engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
