"""Process CPU time per frame of a graph of benchmarks.peer (GRAPHS), by thread and step.

    .venv/bin/python -m benchmarks.cpu_per_frame [--graph full] [--clips NAME ...] [--rounds 3] [--before TREE]
        [--precision fp32|bf16]

--graph names the graph: detect-keypoints (file -> detector -> keypoints -> jsonl, the default) or
full (... -> tracker -> smoother -> lift3d -> fall -> reps -> jsonl).

On 2 busy cores throughput is set by the CPU a frame costs, and CPU time moves much less than
frames/s when other work shares the machine (it still moves: the engines' CPU per call rises
with the load, 4.8-6.2 ms for PicoDet-192 at load 2-10). Each run is its own process (models
compiled before the clock starts) and prints CPU ms per frame, medians over the rounds taken
figure by figure (so they do not add up exactly):

  process   resource.getrusage over the run, all threads (FFmpeg's and OpenVINO's included)
  threads   each thread's own CPU: Python threads (source-*, stage-*) read time.thread_time when
            they end; the others (OpenVINO's, FFmpeg's, OpenCV's workers) from /proc/self/task
            before and after
  steps     CPU inside the named functions, per thread (time.thread_time around each call):
            BGR conversion (the source's `to_ndarray`; the rest of its thread is demuxing and
            decoding), the detector (its preprocess, engine, box decoding and NMS),
            the keypoint estimator (crop warp, normalise, engine, heatmap decoding), JSON encoding,
            and a stage's `process` and `close` (the rest of a stage thread is its queue and batching).
            The light stages of the full graph run in the keypoint stage's thread (StageRunner.host):
            its thread and `process` figures include theirs.

--before TREE runs the same graph with streampose imported from another checkout (`git archive
COMMIT streampose | tar -x -C TREE`) in the same rounds, alternating, for a before/after.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.peer import GRAPHS, VIDEOS, write_graph

CLIPS = ("squat_side_view", "office_man_walking_1280x720")
TICKS = os.sysconf("SC_CLK_TCK")


def _task_cpu() -> dict[int, tuple[str, float]]:
    """tid -> (thread name, CPU seconds) of every thread of this process now."""
    found = {}
    for task in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{task}/stat").read_text()
        except OSError:  # ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(task)] = (name, (int(fields[11]) + int(fields[12])) / TICKS)  # utime + stime
    return found


class StepClock:
    """CPU seconds spent inside wrapped functions, per (thread name, step)."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)

    def timed(self, function, step: str):
        """`function`, its CPU time counted under `step`."""
        seconds = self.seconds

        @functools.wraps(function)
        def timed(*args, **kwargs):
            start = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[threading.current_thread().name, step] += time.thread_time() - start
        return timed

    def wrap(self, owner, attribute: str, step: str) -> None:
        setattr(owner, attribute, self.timed(getattr(owner, attribute), step))


def _clock_steps(clock: StepClock) -> None:
    """Wraps the functions the graph's steps run in (those a --before tree lacks are left out)."""
    from streampose import messages
    from streampose.engines.base import Engine
    from streampose.runtime import stage
    from streampose.sources import video
    from streampose.stages import detector, keypoints
    from streampose.vision import heatmap, picodet, preprocess, topdown

    # decode + BGR conversion: the source calls the picture() its playback yields
    original_partial = video.partial
    video.partial = lambda function, *args, **kwargs: clock.timed(original_partial(function, *args, **kwargs),
                                                                  "to BGR")
    clock.wrap(stage.Stage, "run", "process")  # the rest of a stage thread: queues, batching, metrics
    clock.wrap(stage.Stage, "finish", "close")  # once, at the end (OpenVINO frees its networks)
    clock.wrap(Engine, "run", "engine")
    clock.wrap(preprocess.ImagePreprocessor, "prepare", "detector preprocess")
    clock.wrap(detector.PersonDetector, "detect", "detect (preprocess + engine + boxes)")
    # box decoding + NMS, in the functions each tree has (before/after the candidates-only decoding)
    for owner, name in ((picodet, "decode_raw_heads"), (detector, "select_batch"), (picodet, "raw_head_scores"),
                        (picodet, "decode_raw_cells"), (detector, "select_persons")):
        if hasattr(owner, name):
            clock.wrap(owner, name, "boxes (decode + NMS)")
    clock.wrap(keypoints.PoseEstimator, "estimate", "estimate (crops + engine + heatmaps)")
    clock.wrap(topdown, "warp_crops", "crop warp")
    clock.wrap(keypoints, "normalize_crops", "crop normalise")
    clock.wrap(heatmap, "decode_heatmaps", "heatmap decode (DARK)")
    clock.wrap(messages, "encoded_pose", "JSON encode")


def run_graph(graph: Path, output: Path) -> dict:
    """Runs `graph` to the end in this process; CPU seconds of the run, per thread and step."""
    from streampose.graph.loader import load_graph
    from streampose.models.folder import default_search_path
    from streampose.runtime.pipeline import Pipeline

    clock = StepClock()
    _clock_steps(clock)
    python_threads: dict[str, float] = defaultdict(float)
    python_ids = {threading.main_thread().native_id}
    original_run = threading.Thread.run

    def run_and_record(thread: threading.Thread) -> None:
        python_ids.add(thread.native_id)
        try:
            original_run(thread)
        finally:
            python_threads[thread.name] += time.thread_time()
    threading.Thread.run = run_and_record

    pipeline = Pipeline(load_graph(graph), model_paths=default_search_path(), output_dir=output)
    tasks_before = _task_cpu()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter()
    pipeline.start()
    pipeline.wait()
    wall = time.perf_counter() - wall
    usage = resource.getrusage(resource.RUSAGE_SELF)
    tasks_after = _task_cpu()
    frames = pipeline.metrics.count("frames", stage="log")
    batches = {stage_id: pipeline.metrics.count("batches", stage=stage_id) for stage_id in ("detect", "pose", "log")}

    python_ids.update(t.native_id for t in threading.enumerate())
    threads = dict(python_threads)
    for tid, (name, seconds) in tasks_after.items():
        main = tid == threading.main_thread().native_id
        if tid in python_ids and not main:
            continue  # a Python thread: it recorded itself when it ended (those still alive are idle)
        label = "main" if main else f"native: {name}"
        threads[label] = threads.get(label, 0.0) + seconds - tasks_before.get(tid, (name, 0.0))[1]
    import streampose
    return {"streampose": str(Path(streampose.__file__).resolve().parent), "frames": frames, "wall_s": wall,
            "batches": batches,
            "cpu_s": usage.ru_utime + usage.ru_stime - usage_before.ru_utime - usage_before.ru_stime,
            "threads": threads, "steps": {f"{thread}|{step}": s for (thread, step), s in clock.seconds.items()}}


def run_child(graph: Path, output: Path, tree: Path | None) -> dict:
    here = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    if tree is not None:  # streampose from the other checkout, this file from here
        env["PYTHONPATH"] = os.pathsep.join([str(tree), str(here)])
    result = subprocess.run([sys.executable, "-m", "benchmarks.cpu_per_frame", "--run-graph", str(graph),
                             str(output)], capture_output=True, text=True, cwd=tree or here, env=env)
    if result.returncode:
        raise SystemExit(f"run of {graph.name} failed:\n{result.stderr[-3000:]}")
    run = json.loads(result.stdout.strip().splitlines()[-1])
    expected = ((tree or here) / "streampose").resolve()
    if Path(run["streampose"]) != expected:
        raise SystemExit(f"the run imported streampose from {run['streampose']}, not {expected}")
    return run


def _table(runs: list[dict]) -> list[str]:
    """Median CPU ms per frame: the process, each thread, each step within its thread."""
    def per_frame(values: list[float]) -> str:
        return f"{statistics.median(values) * 1e3:.2f}"

    def closing(run: dict) -> float:
        return sum(s for key, s in run["steps"].items() if key.endswith("|close"))

    frames = runs[0]["frames"]
    batches = ", ".join(f"{stage} {frames / n:.2f}" for stage, n in runs[0]["batches"].items() if n)
    lines = [f"  frames {frames} (frames per batch: {batches}); wall {per_frame([r['wall_s'] / r['frames'] for r in runs])}"
             f" ms/frame; process CPU {per_frame([r['cpu_s'] / r['frames'] for r in runs])} ms/frame, "
             f"**{per_frame([(r['cpu_s'] - closing(r)) / r['frames'] for r in runs])} without the stages' close**"]
    names = sorted({n for r in runs for n in r["threads"]}, key=lambda n: -runs[0]["threads"].get(n, 0))
    for name in names:
        total = [r["threads"].get(name, 0.0) / r["frames"] for r in runs]
        if statistics.median(total) < 5e-5:
            continue
        steps = sorted({k.split("|", 1)[1] for r in runs for k in r["steps"] if k.split("|", 1)[0] == name})
        parts = [f"{step} {per_frame([r['steps'].get(f'{name}|{step}', 0.0) / r['frames'] for r in runs])}"
                 for step in steps]
        lines.append(f"    {name:<24} {per_frame(total):>6}" + (f"   ({', '.join(parts)})" if parts else ""))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", choices=list(GRAPHS), default="detect-keypoints")
    parser.add_argument("--clips", nargs="+", default=list(CLIPS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, metavar="TREE")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="the networks' precision (docs/models.md)")
    parser.add_argument("--run-graph", nargs=2, metavar=("GRAPH", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_graph:
        print(json.dumps(run_graph(Path(args.run_graph[0]), Path(args.run_graph[1]))))
        return
    trees = {"this tree": None, **({f"before ({args.before})": args.before} if args.before else {})}
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for round_ in range(args.rounds):
            for clip in args.clips:
                graph = write_graph(tmp, args.graph, VIDEOS / f"{clip}.mp4", precision=args.precision)
                for label, tree in trees.items():
                    loads.append(os.getloadavg()[0])
                    runs[clip, label].append(run_child(graph, tmp / f"out_{len(loads)}", tree))
    print(f"graph {args.graph}; {args.rounds} rounds, alternating; "
          f"load average (1 min) {min(loads):.1f}-{max(loads):.1f}; "
          "CPU ms per frame, medians (thread total (steps inside it))")
    for clip in args.clips:
        for label in trees:
            print(f"{clip}, {label}:")
            print("\n".join(_table(runs[clip, label])))


if __name__ == "__main__":
    main()
