"""streampose against PaddleDetection's sequential deploy pipeline, alternating, on the same models.

    .venv/bin/python -m benchmarks.peer [--rounds 5] [--clips NAME ...] [--before TREE [--before-graph full]] [--precision fp32|bf16]

Each round runs, for every clip, the peer (shared/peers/ref_pipeline.py, PicoDet-S-192 on
OpenVINO + TinyPose-128x96, 2 threads, DARK, every frame) and streampose's two graphs in its
own process each, one after the other:

  detect-keypoints  file -> detector -> keypoints -> jsonl
  full              file -> detector -> keypoints -> tracker -> smoother -> lift3d -> fall
                    -> reps -> jsonl

Same models and settings as the peer: picodet_s_192_pedestrian with boxes kept from score 0.5
(the peer's det_threshold), tinypose_128x96_ov with DARK, crops expanded by 0.3, every frame.
streampose's engine threads come from its core plan (streampose.runtime.cores). Both run their
networks at `--precision`: fp32 (the default; the peer's `--ov-precision f32`) or bf16 (on a CPU
with native bf16, what the peer runs when it asks OpenVINO for nothing, its own default).

Printed per clip: medians over the rounds of frames/s (streampose: frames over the wall time
from start to the last frame through the graph, models already compiled, the stages' close
after it left out; the peer: its own
`fps_decode_det_kpt`, decode + detect + keypoints, warm-up excluded), the ratio, streampose's
peak memory, the load average around the runs, and the model-bound limit: the machine's cores
divided by the engines' own compute per frame, one thread each, measured by timing the
detector at batch 1 and the keypoint network at the batch sizes the clip's persons make,
standalone (the time no pipeline can beat). A second table gives streampose warm, timed as the
peer is: the peer runs 10 frames before its timed pass, so its figure has no start-up in it;
streampose's warm figure runs from its first frame out of the graph to its last (the pipeline's
fill, one frame's latency at the start, left out). --before TREE adds the detect -> keypoints graph
(or --before-graph full) run with streampose imported from another checkout (an older commit: `git archive COMMIT
streampose | tar -x -C TREE`), in the same rounds, for a before/after on the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("STREAMPOSE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
VIDEOS = SHARED / "media" / "video"
PEER = SHARED / "peers" / "ref_pipeline.py"
CLIPS = ("squat_side_view", "office_man_walking_1280x720", "crowd_walking_overhead",
         "mmaction2_demo_skeleton_2persons")
DETECTOR, KEYPOINTS = "picodet_s_192_pedestrian", "tinypose_128x96_ov"

_POSE = [f"{{id: detect, type: detector, model: {DETECTOR}, score_threshold: 0.5}}",
         f"{{id: pose, type: keypoints, model: {KEYPOINTS}, expand_ratio: 0.3, use_dark: true, "
         "batch: {max_size: 4}}"]
GRAPHS = {
    "detect-keypoints": [*_POSE, "{id: log, type: jsonl, path: '{stream}.jsonl'}"],
    "full": [*_POSE, "{id: track, type: tracker}", "{id: smooth, type: smoother}", "{id: lift, type: lift3d}",
             "{id: falls, type: plugin, plugin: fall}", "{id: reps, type: plugin, plugin: reps}",
             "{id: log, type: jsonl, path: '{stream}.jsonl'}"],
}


def write_graph(folder: Path, name: str, video: Path, cache: Path | None = None, precision: str = "fp32") -> Path:
    """folder/<name>_<video>.yml: GRAPHS[name] reading `video`, engines cached under `cache` (None: default),
    the networks at `precision` (named only when not the default fp32, so an older tree reads the graph)."""
    runtime = "{metrics: {bind: null, log_interval_s: 0}" + (f", engine_cache_dir: '{cache}'}}" if cache else "}")
    path = folder / f"{name}_{video.stem}.yml"
    path.write_text("\n".join([f"sources: [{{id: bench, uri: '{video}'}}]", "stages:",
                               *(f"  - {_at_precision(stage, precision)}" for stage in GRAPHS[name]),
                               f"runtime: {runtime}", ""]))
    return path


def _at_precision(stage: str, precision: str) -> str:
    if precision == "fp32" or "type: detector" not in stage and "type: keypoints" not in stage:
        return stage
    return stage[:-1] + f", precision: {precision}}}"


# --------------------------------------------------------------------------- one run, in its own process

def run_graph(graph: Path, output: Path) -> dict:
    """Runs `graph` to the end; frames/s over the run, peak memory."""
    from streampose.graph.loader import load_graph
    from streampose.models.folder import default_search_path
    from streampose.runtime.pipeline import Pipeline

    pipeline = Pipeline(load_graph(graph), model_paths=default_search_path(), output_dir=output)
    start = time.time()
    pipeline.start()
    pipeline.wait()
    ended = time.time()
    # To the last frame through the graph, as the peer's figure ends with its last frame: the
    # stages' close after it (OpenVINO freeing its compiled networks, 0.1-0.3 s) is not frames' work.
    last_frame = max(state.last_frame_wall for state in pipeline.streams.values())
    first_frame = min(state.first_frame_wall for state in pipeline.streams.values())
    frames = pipeline.metrics.count("frames", stage="log")
    cores = getattr(pipeline, "cores", None)  # (a --before tree may predate the core plan)
    import streampose
    return {"streampose": str(Path(streampose.__file__).resolve().parent),
            "frames": frames, "fps": frames / (last_frame - start),
            "warm_fps": (frames - 1) / (last_frame - first_frame), "close_s": ended - last_frame,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": cores.engine_threads if cores else "engine defaults"}


def model_bound(jsonl: Path, cores: int, precision: str = "fp32", repeats: int = 30) -> dict:
    """Engine compute per frame, one thread each, for the persons each frame of `jsonl` had, and
    the frames/s `cores` cores could reach on it alone."""
    from streampose.engines import load_engine
    from streampose.models.folder import default_search_path, find_model
    from streampose.stages.keypoints import _runs

    persons = [len(json.loads(line)["persons"]) for line in jsonl.read_text().splitlines()]

    def median_ms(engine, batch: int) -> float:
        feed = {t.name: np.random.default_rng(0).random((batch, *t.shape[1:]), np.float32) for t in engine.inputs}
        engine.run(feed)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            engine.run(feed)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    search = default_search_path()
    detector = load_engine(find_model(DETECTOR, search, Path(".")), engine="openvino", precision=precision,
                           threads=1)
    detector_input = next(t for t in detector.inputs if len(t.shape) == 4)
    if any(d == -1 for d in detector_input.shape[1:]):
        raise SystemExit(f"{DETECTOR}: dynamic input shape; the model-bound timing needs a fixed one")
    det_ms = median_ms(detector, 1)
    keypoints = load_engine(find_model(KEYPOINTS, search, Path(".")), engine="openvino", precision=precision,
                            threads=1, max_batch=32)
    sizes = [end - start for n in persons for start, end in _runs(n, 32)]
    kpt_ms = {size: median_ms(keypoints, size) for size in set(sizes)}
    per_frame = det_ms + sum(kpt_ms[s] for s in sizes) / len(persons)
    return {"persons_per_frame": sum(persons) / len(persons), "engine_ms_per_frame": per_frame,
            "limit_fps": cores * 1000 / per_frame}


# --------------------------------------------------------------------------- the comparison

def run_child(*args: str, tree: Path | None = None) -> dict:
    """benchmarks.peer ARGS in a new process; with `tree`, streampose is imported from that checkout."""
    here = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), str(here)])
    # `-m` puts the working directory first on sys.path: run in the other tree, or its streampose
    # would be shadowed by this one (as every --before run was until this was found).
    result = subprocess.run([sys.executable, "-m", "benchmarks.peer", *args], capture_output=True, text=True,
                            cwd=tree or here, env=env)
    if result.returncode:
        raise SystemExit(f"benchmarks.peer {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    run = json.loads(result.stdout.strip().splitlines()[-1])
    expected = ((tree or here) / "streampose").resolve()
    if "streampose" in run and Path(run["streampose"]) != expected:
        raise SystemExit(f"the run imported streampose from {run['streampose']}, not {expected}")
    return run


_PEER_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def run_peer(video: Path, out: Path, precision: str = "fp32") -> float:
    search = os.environ.get("STREAMPOSE_MODELS", str(SHARED / "models"))
    models = next(Path(p) for p in search.split(os.pathsep) if (Path(p) / DETECTOR).is_dir())
    result = subprocess.run([sys.executable, str(PEER), "--det", str(models / DETECTOR), "--det-engine", "openvino",
                             "--kpt", str(models / KEYPOINTS), "--video", str(video), "--out", str(out), "--bench",
                             "--ov-precision", _PEER_PRECISION[precision]],
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"the peer failed on {video.name}:\n{result.stderr[-3000:]}")
    return json.loads(out.with_suffix(".bench.json").read_text())["fps_decode_det_kpt"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clips", nargs="+", default=list(CLIPS))
    parser.add_argument("--before", type=Path, metavar="TREE",
                        help="also run detect -> keypoints with streampose from this checkout (e.g. a worktree "
                             "of an older commit), alternating with the others")
    parser.add_argument("--before-graph", choices=list(GRAPHS), default="detect-keypoints",
                        help="the graph --before runs (default detect-keypoints)")
    parser.add_argument("--precision", choices=sorted(_PEER_PRECISION), default="fp32",
                        help="both pipelines' network precision (bf16: a CPU with native bf16)")
    parser.add_argument("--run-graph", nargs=2, metavar=("GRAPH", "OUTPUT"), help=argparse.SUPPRESS)
    parser.add_argument("--model-bound", nargs=3, metavar=("JSONL", "CORES", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_graph:
        print(json.dumps(run_graph(Path(args.run_graph[0]), Path(args.run_graph[1]))))
        return
    if args.model_bound:
        print(json.dumps(model_bound(Path(args.model_bound[0]), int(args.model_bound[1]), args.model_bound[2])))
        return

    from streampose.runtime.cores import available_cores
    cores = available_cores()
    print(f"machine: {platform.machine()}, {cores} cores, {platform.processor() or platform.platform()}; "
          f"{args.rounds} rounds, alternating; networks at {args.precision}")
    runs: dict[tuple[str, str], list[float]] = {}
    peaks: dict[str, list[float]] = {}
    loads: list[float] = []
    closes: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for round_ in range(args.rounds):
            for clip in args.clips:
                video = VIDEOS / f"{clip}.mp4"
                loads.append(os.getloadavg()[0])
                runs.setdefault((clip, "peer"), []).append(run_peer(video, tmp / f"peer_{clip}.jsonl", args.precision))
                for name in GRAPHS:
                    out = tmp / f"{name}_{clip}"
                    result = run_child("--run-graph", str(write_graph(tmp, name, video, precision=args.precision)),
                                       str(out))
                    runs.setdefault((clip, name), []).append(result["fps"])
                    runs.setdefault((clip, f"{name} warm"), []).append(result["warm_fps"])
                    closes.append(result["close_s"])
                    if name == "detect-keypoints":
                        peaks.setdefault(clip, []).append(result["peak_mb"])
                        threads = result["threads"]
                if args.before:
                    result = run_child("--run-graph", str(write_graph(tmp, args.before_graph, video,
                                                                      precision=args.precision)),
                                       str(tmp / f"before_{clip}"), tree=args.before)
                    runs.setdefault((clip, "before"), []).append(result["fps"])
                print(f"round {round_ + 1}, {clip}: streampose {runs[clip, 'detect-keypoints'][-1]:.1f}, "
                      f"peer {runs[clip, 'peer'][-1]:.1f} frames/s, load {loads[-1]:.1f}", flush=True)
        # The jsonl sink renames a finished file with its end time: bench.<date>_<time>.jsonl.
        bounds = {clip: run_child("--model-bound", str(next((tmp / f"detect-keypoints_{clip}").glob("bench*.jsonl"))),
                                  str(cores), args.precision)
                  for clip in args.clips}
    print(f"\nload average (1 min) at the runs' starts: {min(loads):.1f}-{max(loads):.1f}, "
          f"median {statistics.median(loads):.1f}; engine threads (detect -> keypoints) {threads}; "
          f"streampose's close after its last frame (not timed): median {statistics.median(closes):.2f} s\n")
    before = f" | --before {args.before.name} {args.before_graph}, ratio" if args.before else ""
    print("| clip (persons/frame) | streampose, detect -> keypoints -> jsonl | peer | ratio | streampose full chain "
          f"| model-bound limit, {cores} cores (engine ms/frame) | share of limit | peak MB{before} |")
    print("|---|---|---|---|---|---|---|---|" + ("---|" if args.before else ""))
    for clip in args.clips:
        ours, peer, full = (statistics.median(runs[clip, k]) for k in ("detect-keypoints", "peer", "full"))
        bound = bounds[clip]
        old = f" | {statistics.median(runs[clip, 'before']):.1f}, " \
              f"{statistics.median(runs[clip, 'before']) / peer:.2f}" if args.before else ""
        print(f"| {clip} ({bound['persons_per_frame']:.2f}) | {ours:.1f} | {peer:.1f} | {ours / peer:.2f} | "
              f"{full:.1f} | {bound['limit_fps']:.0f} ({bound['engine_ms_per_frame']:.2f}) | "
              f"{ours / bound['limit_fps']:.0%} | {statistics.median(peaks[clip]):.0f}{old} |")
    # The peer's figure leaves out its warm-up (10 frames run before the timed pass). The same for
    # streampose: from the first frame out of the graph to the last, so its fill (the first frame's
    # decode, detection and keypoints one after the other, 40-70 ms) is left out as well.
    print("\nWarm, as the peer is timed (streampose from its first frame out to its last):\n")
    print("| clip | streampose, detect -> keypoints | ratio to the peer | full chain | full chain / detect -> keypoints |")
    print("|---|---|---|---|---|")
    for clip in args.clips:
        ours, peer, full = (statistics.median(runs[clip, k])
                            for k in ("detect-keypoints warm", "peer", "full warm"))
        print(f"| {clip} | {ours:.1f} | {ours / peer:.2f} | {full:.1f} | {full / ours:.0%} |")
    print("\nper round (frames/s): " + json.dumps({f"{clip} {k}": [round(v, 1) for v in values]
                                                  for (clip, k), values in runs.items()}))


if __name__ == "__main__":
    main()
