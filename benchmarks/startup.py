"""Start time of a graph: building its stages, every batch size compiled, with an empty and a
warm compiled-model cache.

    .venv/bin/python -m benchmarks.startup [--rounds 3]

Builds the detect -> keypoints -> jsonl graph of benchmarks/peer.py (and the full chain) with
runtime.engine_cache_dir in a fresh folder (cold: every network compiled), then again with that
folder filled (warm), and prints the medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.peer import GRAPHS, VIDEOS, write_graph
from streampose.graph.loader import load_graph
from streampose.models.folder import default_search_path
from streampose.runtime.pipeline import Pipeline


def build_seconds(graph: Path, output: Path) -> float:
    start = time.perf_counter()
    pipeline = Pipeline(load_graph(graph), model_paths=default_search_path(), output_dir=output)
    elapsed = time.perf_counter() - start
    for runner in pipeline.runners.values():
        runner.stage.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| graph | cold cache (s) | warm cache (s) |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in GRAPHS:
            cold, warm = [], []
            for round_ in range(args.rounds):
                cache = tmp / f"cache_{name}_{round_}"
                graph = write_graph(tmp, name, VIDEOS / "squat_side_view.mp4", cache=cache)
                cold.append(build_seconds(graph, tmp / "out"))
                warm.append(build_seconds(graph, tmp / "out"))
            print(f"| {name} | {statistics.median(cold):.2f} | {statistics.median(warm):.2f} |")


if __name__ == "__main__":
    main()
