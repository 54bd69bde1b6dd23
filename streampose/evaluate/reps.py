"""`streampose evaluate reps`: the repetition counter on the labelled videos, per clip and per track.

Every clip of the labels file goes through detector -> keypoints -> tracker -> smoother ->
plugin reps, every frame processed, as in graphs/fitness.yml (the same models). By default the
detector and keypoint results come from the pose cache (`streampose.evaluate.pose_cache`, built
on first use) and only the stages after them run, the same classes a graph runs; `--no-cache`
runs the full graph instead.

A clip is *exact* when, for every exercise, the `rep` events of all its tracks add up to the
labelled count, and no other exercise is counted; a clip without labelled repetitions (falls,
everyday activities, walking) must count nothing. `--cv` adds leave-one-source-out
cross-validation of the counter's thresholds (`GRID`), as `evaluate falls --cv` does for the
fall plugin: for each source of clips (SOURCES.md beside the labels; the first nine clips are
one source, "original"), each parameter is chosen on the other sources' clips and the held-out
clips are counted with those choices.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from streampose.evaluate import pose_cache
from streampose.evaluate.sources import (add_clip_arguments, clip_files, clip_sources, labelled_clips, parse_params,
                                         user_error)
from streampose.frame import Event, Frame
from streampose.graph.loader import load_graph
from streampose.models.folder import default_search_path
from streampose.plugins.reps import EXERCISE_NAMES, RepParams
from streampose.runtime.pipeline import Pipeline

DETECTOR, KEYPOINTS = "picodet_s_192_lcnet_pedestrian_ov", "tinypose_128x96_ov"   # graphs/fitness.yml's

AFTER_POSE = """\
  - {{id: track, type: tracker}}
  - {{id: smooth, type: smoother}}
  - {{id: reps, type: plugin, plugin: reps, params: {params}}}
"""
FULL_GRAPH = """\
# Written by streampose evaluate reps --no-cache: every labelled clip through the fitness graph.
sources: {sources}
stages:
{front}{after}runtime: {{metrics: {{bind: null}}, log_level: warning}}
"""

# The parameters cross-validation chooses, and the values it tries (the others keep their
# defaults). Each mainly moves one exercise's counts, so they are scanned one at a time.
# smoothing_s is not among them: 0.05 and 0.1 both count every clip right (0 and 0.15 one clip
# wrong each), and 0.1 doubles the lag of the rep times (0.08 s), so it stays at 0.05.
GRID = {
    "posture_grace_s": [0.0, 0.1, 0.2, 0.3, 0.5, 1.0],
    "squat_depth": [0.5, 0.6, 0.7],
    "squat_knee_bend_deg": [50, 60, 70, 80],
    "push_up_top_deg": [25, 30, 34, 38, 42, 46],
    "push_up_bottom_deg": [50, 70, 90, 110],
    "push_up_torso_drop": [0.4, 0.5, 0.6, 0.7, 0.8],
    "jumping_jack_feet_width": [1.2, 1.5, 1.8, 2.1],
    "lunge_split": [0.4, 0.5, 0.6, 0.7],
    "lunge_depth": [0.5, 0.6, 0.7],
    "sit_up_lying_deg": [55, 60, 65, 70, 75],
    "sit_up_up_deg": [25, 35, 45],
    "burpee_plank_lean_deg": [45, 55, 65, 75],
}


# ------------------------------------------------------------------ running

def _replay_graph(clips: list[Path], params: dict) -> str:
    sources = json.dumps([{"id": pose_cache.stream_id(c), "uri": str(c)} for c in clips])
    return f"sources: {sources}\nstages:\n" + AFTER_POSE.format(params=json.dumps(params))


def track_cached(clips: list[Path], cache_dir: Path, models: list[Path], precision: str = "fp32",
                 front: tuple[str, str] = (DETECTOR, KEYPOINTS)) -> dict[str, list[Frame]]:
    """Every clip's cached frames through the tracker and smoother stages, which no counter
    parameter changes, kept without their images for the plugin to run over, once per setting."""
    entries = pose_cache.build(clips, cache_dir, *front, models, precision)
    with tempfile.TemporaryDirectory() as scratch:
        stages = pose_cache.build_stages(_replay_graph(clips, {}), Path(scratch), default_search_path(models))[:-1]
        tracked: dict[str, list[Frame]] = defaultdict(list)
        for clip in clips:
            for frame in pose_cache.replay([pose_cache.CachedClip.load(entries[clip])], stages):
                frame.image = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), frame.image.shape)
                tracked[frame.stream].append(frame)
    return tracked


def run_plugin(tracked: dict[str, list[Frame]], models: list[Path], params: dict,
               streams: list[str] | None = None) -> dict[str, list[Event]]:
    """The reps plugin stage over tracked frames (of `streams`, default all): each clip's `rep` events."""
    clips = [Path(stream) for stream in tracked]
    with tempfile.TemporaryDirectory() as scratch:
        plugin = pose_cache.build_stages(_replay_graph(clips, params), Path(scratch), default_search_path(models))[-1]
    events = {}
    for stream in streams or list(tracked):
        frames = tracked[stream]
        for frame in frames:   # the same frames serve every setting: clear what the last run wrote
            frame.events = []
            frame.persons.annotations = [{} for _ in range(len(frame.persons))]
        events[stream] = [e for frame in pose_cache.replay_frames(stream, frames, [plugin])
                          for e in frame.events if e.kind == "rep"]
    return events


class _Collector(Pipeline):
    """The full graph, keeping the `rep` events the plugin (the last stage) raised."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events: dict[str, list[Event]] = {sid: [] for sid in self.streams}

    def _on_processed(self, frame: Frame) -> None:
        self.events[frame.stream] += [e for e in frame.events if e.kind == "rep"]
        super()._on_processed(frame)


def run_full(clips: list[Path], models: list[Path], params: dict, network: str | None = None,
             precision: str = "fp32", front: tuple[str, str] = (DETECTOR, KEYPOINTS)) -> dict[str, list[Event]]:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "reps.yml"
        sources = json.dumps([{"id": pose_cache.stream_id(c), "uri": str(c)} for c in clips])
        path.write_text(FULL_GRAPH.format(sources=sources,
                                          front=pose_cache.front_stages(*front, network, precision),
                                          after=AFTER_POSE.format(params=json.dumps(params))))
        pipeline = _Collector(load_graph(path), model_paths=default_search_path(models), output_dir=Path(scratch))
        pipeline.start()
        if not pipeline.wait():
            raise RuntimeError("the graph did not finish")
    return pipeline.events


# ------------------------------------------------------------------ scoring

def judge(clip: str, label: dict, events: list[Event], exercise: str = "auto", offset: float = 0.0) -> dict:
    """One clip's result: labelled and counted repetitions per exercise, counts per track, and
    the events' bottom times (plus `offset`: from the video's timeline to the labels') against
    the labelled ones."""
    expected = {name: value["count"] for name, value in (label.get("reps") or {}).items()
                if exercise in ("auto", name)}
    per_track: dict[int, dict[str, int]] = defaultdict(dict)
    counted: dict[str, int] = defaultdict(int)
    for e in events:
        per_track[e.track_id][e.data["exercise"]] = e.data["count"]
        counted[e.data["exercise"]] += 1
    bottoms = sorted(t for name, value in (label.get("reps") or {}).items() if name in expected
                     for t in value["bottoms_s"])
    times = sorted(round(e.data["bottom_time"] + offset, 2) for e in events)
    error = max((abs(a - b) for a, b in zip(times, bottoms)), default=None) if len(times) == len(bottoms) else None
    return {"clip": clip, "labelled": expected, "counted": dict(counted),
            "per_track": {str(track): counts for track, counts in sorted(per_track.items())},
            "exact": dict(counted) == {name: n for name, n in expected.items() if n},
            "rep_times_s": times, "labelled_bottoms_s": bottoms,
            "largest_time_error_s": None if error is None else round(error, 2)}


def totals(results: list[dict]) -> dict:
    counting = [r for r in results if r["labelled"]]
    others = [r for r in results if not r["labelled"]]
    return {"clips": len(results), "exact": sum(r["exact"] for r in results),
            "counting_clips": len(counting), "counting_exact": sum(r["exact"] for r in counting),
            "labelled_reps": sum(sum(r["labelled"].values()) for r in counting),
            "counted_reps": sum(sum(r["counted"].values()) for r in results),
            "other_clips": len(others), "other_zero": sum(not r["counted"] for r in others)}


def summary(t: dict) -> str:
    return (f"{t['clips']} clips, {t['exact']} exact: counting clips exact {t['counting_exact']}/"
            f"{t['counting_clips']} ({t['counted_reps']} repetitions counted, {t['labelled_reps']} labelled), "
            f"clips without repetitions counting nothing {t['other_zero']}/{t['other_clips']}")


def _counts(counts: dict[str, int]) -> str:
    return " + ".join(f"{n} {name}" for name, n in counts.items()) or "0"


def table(results: list[dict]) -> str:
    rows = ["| clip | labelled | counted per track | exact | rep times (s) | labelled bottoms (s) | "
            "largest time error (s) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        tracks = "; ".join(f"#{track}: {_counts(counts)}" for track, counts in r["per_track"].items()) or "0"
        error = r["largest_time_error_s"]
        rows.append(f"| {Path(r['clip']).stem} | {_counts(r['labelled'])} | {tracks} | "
                    f"{'yes' if r['exact'] else '**NO**'} | {' '.join(f'{t:.2f}' for t in r['rep_times_s']) or '-'} | "
                    f"{' '.join(f'{t:.2f}' for t in r['labelled_bottoms_s']) or '-'} | "
                    f"{'-' if error is None else f'{error:.2f}'} |")
    return "\n".join(rows)


# ------------------------------------------------------------------ cross-validation

_SHARED: tuple = ()   # (tracked frames, models, labels, exercise) for the scan, in each of its processes


def _load_shared(clips: list[Path], cache_dir: Path, models: list[Path], precision: str, front: tuple[str, str],
                 labels: dict, exercise: str) -> None:
    """A scan worker's start: its own tracked frames, replayed from the pose cache (seconds).
    Workers are spawned, not forked: forked from the evaluation, whose OpenVINO threads are alive,
    the workers of a full run at 10 fps hung (each waiting on a lock inside pydantic-core, no CPU
    used for minutes; a fork copies a lock some other thread held)."""
    global _SHARED
    _SHARED = (track_cached(clips, cache_dir, models, precision, front), models, labels, exercise)


def _scan_point(params: dict) -> dict[str, bool]:
    tracked, models, labels, exercise = _SHARED
    events = run_plugin(tracked, models, params)
    return {n: judge(n, labels[n], events[Path(n).stem], exercise)["exact"] for n in labels}


def _middle_of_best(values: list, scores: list[int]):
    """The middle of the values with the highest score (the centre of the widest plateau's
    kind: away from the edge where counts start to go wrong)."""
    best = [v for v, s in zip(values, scores) if s == max(scores)]
    return best[len(best) // 2]


def cross_validate(names: list[str], sources: dict[str, str], base: dict, evaluate, jobs: int = 1,
                   worker_setup: tuple = (), log=print) -> dict:
    """Leave-one-source-out. Each GRID parameter is scanned alone (the others at `base` or their
    defaults) over every clip once; for each held-out source every parameter takes the middle of
    the values that count the most of the other sources' clips exactly, and the held-out clips
    are counted with those choices. `evaluate(params, names)` returns the judged results. The
    scan runs here on `_SHARED`, or with `jobs` > 1 in that many processes, each started by
    `_load_shared(*worker_setup)`."""
    points = [{**base, name: value} for name, values in GRID.items() for value in values]
    started = time.monotonic()
    if jobs > 1:
        with multiprocessing.get_context("spawn").Pool(jobs, _load_shared, worker_setup) as pool:
            exact = pool.map(_scan_point, points)
    else:
        exact = [_scan_point(p) for p in points]
    log(f"  {len(points)} grid points in {time.monotonic() - started:.0f} s")
    scans = dict.fromkeys(GRID)
    done = iter(exact)
    for name, values in GRID.items():
        scans[name] = [next(done) for _ in values]

    def choose(clips: list[str]) -> dict:
        return {name: _middle_of_best(values, [sum(scan[n] for n in clips) for scan in scans[name]])
                for name, values in GRID.items()}

    folds, held_out = [], []
    for source in sorted(set(sources.values())):
        test = [n for n in names if sources[n] == source]
        params = choose([n for n in names if sources[n] != source])
        results = evaluate({**base, **params}, test)
        held_out += results
        changed = {k: v for k, v in params.items() if v != base.get(k, RepParams.model_fields[k].default)}
        folds.append({"source": source, "clips": test, "params": params, "changed": changed,
                      "exact": sum(r["exact"] for r in results)})
    in_sample_params = choose(names)
    scores = {name: {str(v): sum(scan.values()) for v, scan in zip(values, scans[name])}
              for name, values in GRID.items()}
    return {"grid": GRID, "scores": scores, "folds": folds, "held_out": held_out,
            "held_out_totals": totals(held_out), "in_sample_params": in_sample_params,
            "in_sample": evaluate({**base, **in_sample_params}, names)}


def cv_table(results: list[dict], cv: dict, sources: dict[str, str]) -> str:
    """Per clip with repetitions (and any other clip counted wrong): in-sample against held-out."""
    held = {r["clip"]: r for r in cv["held_out"]}
    rows = ["| clip | held-out source | labelled | in-sample (defaults) | held-out source |", "|---|---|---|---|---|"]
    for r in results:
        h = held[r["clip"]]
        if r["labelled"] or not r["exact"] or not h["exact"]:
            mark = {True: "", False: " **x**"}
            rows.append(f"| {Path(r['clip']).stem} | {sources[r['clip']]} | {_counts(r['labelled'])} | "
                        f"{_counts(r['counted'])}{mark[r['exact']]} | {_counts(h['counted'])}{mark[h['exact']]} |")
    return "\n".join(rows)


def scores_table(cv: dict) -> str:
    defaults = RepParams()
    rows = ["| parameter | default | clips exact over the grid (of all) | chosen on all clips |", "|---|---|---|---|"]
    for name, scores in cv["scores"].items():
        rows.append(f"| `{name}` | {getattr(defaults, name):g} | "
                    f"{', '.join(f'{v}: {s}' for v, s in scores.items())} | {cv['in_sample_params'][name]:g} |")
    return "\n".join(rows)


# ------------------------------------------------------------------ command

def add_parser(commands) -> None:
    p = commands.add_parser("reps", help="score the repetition counter on the labelled videos (per clip and track)")
    add_clip_arguments(p)
    p.add_argument("--exercise", choices=["auto", *EXERCISE_NAMES], default="auto",
                   help="count only this exercise (the plugin's exercise parameter); labels of others are ignored")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a reps plugin parameter, e.g. push_up_top_deg=40 (repeatable)")
    p.add_argument("--cv", action="store_true", help="also leave-one-source-out cross-validation over GRID")
    p.add_argument("--jobs", type=int, default=1, help="processes for the --cv scan (default 1)")
    p.add_argument("-o", "--output", type=Path, default=Path("out/evaluate/reps"), help="folder for reps.md and reps.json")
    p.set_defaults(func=command, detector=DETECTOR, keypoints=KEYPOINTS)


def command(args) -> int:
    global _SHARED
    labels, names = labelled_clips(args)
    if args.cv and (args.no_cache or args.pose):
        user_error("--cv replays the pose cache: leave out --no-cache and --pose")
    clips, offsets, _scratch = clip_files(args.videos, names, args.fps)   # re-encoded ones live as long as _scratch
    files = dict(zip(names, clips))
    base = parse_params(args.param, RepParams) | ({} if args.exercise == "auto" else {"exercise": args.exercise})
    models = args.models or [Path(os.environ.get("STREAMPOSE_MODELS", "models"))]

    started = time.monotonic()
    front = (args.detector, args.keypoints)
    tracked = None if args.no_cache or args.pose else track_cached(clips, args.cache, models, args.precision, front)

    def evaluate(params: dict, which: list[str]) -> list[dict]:
        if tracked is None:
            events = run_full([files[n] for n in which], models, params, args.pose, args.precision, front)
        else:
            events = run_plugin(tracked, models, params, [Path(n).stem for n in which])
        return [judge(n, labels[n], events[Path(n).stem], args.exercise, offsets[n]) for n in which]

    results = evaluate(base, names)
    elapsed = time.monotonic() - started
    t = totals(results)
    report = [f"# Repetition counting\n\nparams: {base or 'defaults'}; "
              f"{f'pose stage {args.pose}' if args.pose else ' + '.join(front)}; "
              f"{'pose cache' if tracked is not None else 'full graph'}; {elapsed:.0f} s\n", table(results), "", summary(t)]
    print("\n".join(report[1:]), flush=True)
    out = {"params": base, "elapsed_s": round(elapsed, 1), "totals": t, "clips": results}
    if args.cv:
        sources = clip_sources(args.sources or args.labels.parent / "SOURCES.md", names)
        print(f"\nleave-one-source-out cross-validation over {sum(map(len, GRID.values()))} grid points", flush=True)
        _SHARED = (tracked, models, {n: labels[n] for n in names}, args.exercise)
        setup = (clips, args.cache, models, args.precision, front, _SHARED[2], args.exercise)
        cv = cross_validate(names, sources, base, evaluate, args.jobs, setup)
        changed = [f"{f['source']}: {f['changed']}" for f in cv["folds"] if f["changed"]]
        report += ["", "## Leave-one-source-out", "", cv_table(results, cv, sources), "",
                   f"held out: {summary(cv['held_out_totals'])}",
                   f"in sample (chosen on all clips: {cv['in_sample_params']}): {summary(totals(cv['in_sample']))}",
                   "", "folds choosing other values than the defaults: " + ("; ".join(changed) or "none"),
                   "", scores_table(cv)]
        print("\n".join(report[-10:]))
        out["cv"] = {k: v for k, v in cv.items() if k != "in_sample"} | {"in_sample_totals": totals(cv["in_sample"])}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "reps.md").write_text("\n".join(report) + "\n")
    (args.output / "reps.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {args.output}/reps.md, reps.json")
    return 0 if t["exact"] == t["clips"] else 1
