"""`streampose evaluate falls`: the fall plugin on the labelled videos, scored per event.

Every clip of the labels file goes through detector -> keypoints -> tracker -> smoother ->
plugin fall, every frame processed. By default the detector and keypoint results come from
the pose cache (`streampose.evaluate.pose_cache`, built on first use) and only the stages
after them run, the same classes a graph runs; `--no-cache` runs the full graph instead, and
`--pose NETWORK` runs it with a detector-free pose stage (streampose.stages.pose) in place of
detector -> keypoints.

Scoring, as fall-detection papers count, with no guess of who "the main person" is:

- a labelled fall is *detected* when a `fall_confirmed` (any track) comes between its
  `start_s` and `on_ground_s + MAX_DELAY_S`; the delay is measured from `on_ground_s`;
- its *long lie* is caught when the person is still down `down_alarm_s` after `on_ground_s`
  (the label's `recovered_s` is later, or null and the clip lasts that long) and a
  `person_down` comes within LONG_LIE_TOLERANCE_S of that time;
- an alarm (`fall_confirmed` or `person_down`) outside every labelled fall's window
  (`start_s` to `on_ground_s + FALL_WINDOW_S`, or to the long-lie time plus the tolerance) is a
  *false alarm*; an `other_down_events` entry (deliberate lying, kneeling, planks...) with an
  alarm between its `start_s` and its `recovered_s` (or the clip's end) is *violated*.

Totals: recall within MAX_DELAY_S, median and 90th percentile delay, false alarms per hour of
footage outside the fall windows. `--cv` adds leave-one-source-out cross-validation of a small
grid of plugin thresholds (`CV_GRID`): for each source of clips (SOURCES.md beside the labels;
the first nine clips are one source, "original") the grid point best on the other sources is
scored on it. `--cv-fps 10 5 3` pools the clips re-encoded at those rates into every fold, so
a threshold is chosen for cameras from 3 fps up, not for the clips' own 10-60 fps alone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streampose.evaluate import clip_zones, pose_cache
from streampose.evaluate.sources import (add_clip_arguments, clip_files, clip_sources, labelled_clips, parse_params,
                                         user_error)
from streampose.frame import Frame
from streampose.graph.loader import load_graph
from streampose.models.folder import default_search_path
from streampose.plugins.fall import FallDetector
from streampose.runtime.pipeline import Pipeline

MAX_DELAY_S = 1.5          # a fall alarm this long after the body is on the ground is in time
FALL_WINDOW_S = 5.0        # alarms up to this long after on_ground_s belong to the fall (late, not false)
LONG_LIE_TOLERANCE_S = 1.0
ALARMS = ("fall_confirmed", "person_down")
DETECTOR, KEYPOINTS = "picodet_s_320_lcnet_pedestrian_ov", "tinypose_128x96_ov"

# Everything after the keypoint stage, as in graphs/rtsp_fall.yml. OC-SORT follows the body
# through the fall's sudden change of box shape, and weakly scored detections (a detector
# trained on walking people scores a lying body low) may continue a track at a lower overlap.
AFTER_POSE = """\
  - {{id: track, type: tracker, algorithm: ocsort, low_match_iou: 0.3}}
  - {{id: smooth, type: smoother}}
{lift}  - {{id: fall, type: plugin, plugin: fall, params: {params}}}
"""
# --lift: the shipped 3D lifter before the plugin, which then reads its torso angle and heights
# from the 3D joints (params use_3d: true).
LIFT_STAGE = "  - {id: lift, type: lift3d}\n"


def after_pose(params: dict, lift: bool) -> str:
    return AFTER_POSE.format(params=plugin_params_text(params), lift=LIFT_STAGE if lift else "")
FULL_GRAPH = """\
# Written by streampose evaluate falls --no-cache: every labelled clip through the fall graph.
sources: {sources}
stages:
{front}{after}runtime: {{metrics: {{bind: null}}, log_level: warning}}
"""

# The thresholds cross-validation chooses among: the ones that trade missed falls against
# false alarms (docs/falls.md, "Where to turn"): how fast a descent must be, how long the person
# must stay down (a burpee lies about 1.2 s), how far down counts as on the floor.
CV_GRID = {
    "min_speed": [0.3, 0.5],
    "confirm_s": [0.6, 0.8, 1.2],
    "floor_drop": [0.35, 0.45, 0.55],
}


@dataclass
class ClipRun:
    """What the fall plugin produced on one clip: alarms and, per track, its score and state over time."""

    duration: float = 0.0
    frames: int = 0
    events: list[dict] = field(default_factory=list)
    tracks: dict[int, list[tuple[float, float, str]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, frame: Frame) -> None:
        self.frames += 1
        self.duration = max(self.duration, frame.media_time)
        for track_id, notes in zip(frame.persons.track_ids.tolist(), frame.persons.annotations):
            if "fall_state" in notes:
                self.tracks[track_id].append((frame.media_time, notes["fall_score"], notes["fall_state"]))
        self.events += [{"kind": e.kind, "time": round(e.media_time, 3), "track_id": e.track_id,
                         "score": round(e.score, 3), "lost_while_down": bool(e.data.get("lost_while_down"))}
                        for e in frame.events]


# ------------------------------------------------------------------ running

def plugin_params_text(params: dict) -> str:
    return json.dumps(params)


def track_cached(clips: list[Path], cache_dir: Path, models: list[Path], lift: bool = False,
                 precision: str = "fp32", front: tuple[str, str] = (DETECTOR, KEYPOINTS)) -> dict[str, list[Frame]]:
    """Every clip's cached frames through the tracker and smoother stages (and the lifter with
    `lift`), which no fall parameter changes, kept without their images for the fall plugin to
    run over, once per parameter setting."""
    entries = pose_cache.build(clips, cache_dir, *front, models, precision)
    with tempfile.TemporaryDirectory() as scratch:
        stages = pose_cache.build_stages(_replay_graph(clips, {}, lift), Path(scratch),
                                         default_search_path(models))[:-1]
        tracked: dict[str, list[Frame]] = defaultdict(list)
        for clip in clips:
            pictures = pose_cache.pictures(clip)
            for frame in pose_cache.replay([pose_cache.CachedClip.load(entries[clip])], stages):
                # Nothing after the tracker reads the image; the plugin needs its size and picture.
                frame.image = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), frame.image.shape)
                frame.picture = pictures[frame.index]
                tracked[frame.stream].append(frame)
    return tracked


def run_plugin(tracked: dict[str, list[Frame]], models: list[Path], params: dict) -> dict[str, ClipRun]:
    """The fall plugin stage over tracked frames, each clip's stream opened before and ended after them."""
    clips = [Path(stream) for stream in tracked]
    with tempfile.TemporaryDirectory() as scratch:
        plugin = pose_cache.build_stages(_replay_graph(clips, params), Path(scratch), default_search_path(models))[-1]
    runs = {}
    for stream, frames in tracked.items():
        runs[stream] = ClipRun()
        for frame in frames:
            frame.events = []
        for frame in pose_cache.replay_frames(stream, frames, [plugin]):
            runs[stream].add(frame)
    return runs


def _replay_graph(clips: list[Path], params: dict, lift: bool = False) -> str:
    sources = json.dumps([{"id": pose_cache.stream_id(c), "uri": str(c)} for c in clips])
    return f"sources: {sources}\nstages:\n" + after_pose(params, lift)


class _Collector(Pipeline):
    """The full graph, keeping what the fall plugin (the last stage) made of every frame."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.runs = {sid: ClipRun() for sid in self.streams}

    def _on_processed(self, frame: Frame) -> None:
        self.runs[frame.stream].add(frame)
        super()._on_processed(frame)


def run_full(clips: list[Path], models: list[Path], params: dict, lift: bool = False,
             zones: dict[str, tuple] | None = None, network: str | None = None,
             precision: str = "fp32", front: tuple[str, str] = (DETECTOR, KEYPOINTS)) -> dict[str, ClipRun]:
    """The full graph over `clips`, each source with its zones (clip file name -> zones); `front`
    names its detector and keypoint models, or `network` puts the detector-free pose stage with
    that network in front instead."""
    zones = zones or {}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "falls.yml"
        sources = json.dumps([{"id": pose_cache.stream_id(c), "uri": str(c), "zones": clip_zones.as_graph(zones.get(c.name, ()))}
                              for c in clips])
        path.write_text(FULL_GRAPH.format(sources=sources,
                                          front=pose_cache.front_stages(*front, network, precision),
                                          after=after_pose(params, lift)))
        pipeline = _Collector(load_graph(path), model_paths=default_search_path(models), output_dir=Path(scratch))
        pipeline.start()
        if not pipeline.wait():
            raise RuntimeError("the graph did not finish")
    return pipeline.runs


def shift_times(run: ClipRun, offset: float) -> None:
    """Move a run onto the labels' timeline (a re-encoded clip starts at 0)."""
    run.duration += offset
    for event in run.events:
        event["time"] = round(event["time"] + offset, 3)
    for samples in run.tracks.values():
        samples[:] = [(t + offset, score, state) for t, score, state in samples]


# ------------------------------------------------------------------ scoring

def down_alarm_s(params: dict) -> float:
    return getattr(FallDetector.Params.model_validate(params), "down_alarm_s", float("inf"))


def judge(clip: str, label: dict, run: ClipRun, long_lie_s: float) -> dict:
    """One clip's result (see the module's docstring)."""
    duration = max(float(label.get("duration_s") or 0.0), run.duration)
    alarms = [e for e in run.events if e["kind"] in ALARMS]
    falls, windows = [], []
    for fall in label.get("falls") or []:
        start, ground, recovered = fall["start_s"], fall["on_ground_s"], fall.get("recovered_s")
        lie_at = ground + long_lie_s
        lies = lie_at <= duration and (recovered is None or recovered > lie_at)
        confirmed = [a for a in alarms if a["kind"] == "fall_confirmed" and start <= a["time"] <= ground + MAX_DELAY_S]
        long_lie = [a for a in alarms if a["kind"] == "person_down" and abs(a["time"] - lie_at) <= LONG_LIE_TOLERANCE_S]
        falls.append({"start_s": start, "on_ground_s": ground, "recovered_s": recovered,
                      "detected": bool(confirmed), "delay": round(confirmed[0]["time"] - ground, 2) if confirmed else None,
                      "long_lie_expected": lies, "long_lie_caught": bool(long_lie) if lies else None})
        windows.append((start, max(ground + FALL_WINDOW_S, lie_at + LONG_LIE_TOLERANCE_S)))
    false_alarms = [a for a in alarms if not any(lo <= a["time"] <= hi for lo, hi in windows)]
    others = []
    for other in label.get("other_down_events") or []:
        end = other.get("recovered_s") if other.get("recovered_s") is not None else duration
        raised = [a for a in alarms if other["start_s"] <= a["time"] <= end]
        others.append({"type": other["type"], "start_s": other["start_s"], "end_s": end, "alarms": len(raised)})
    fall_time = sum(min(hi, duration) - max(lo, 0.0) for lo, hi in windows)
    return {"clip": clip, "duration_s": round(duration, 2), "frames": run.frames, "no_fall_s": round(duration - fall_time, 2),
            "falls": falls, "alarms": alarms, "false_alarms": false_alarms, "other_down_events": others,
            "passed": all(f["detected"] for f in falls) and not false_alarms and not any(o["alarms"] for o in others)}


def totals(results: list[dict]) -> dict:
    falls = [f for r in results for f in r["falls"]]
    delays = [f["delay"] for f in falls if f["detected"]]
    lies = [f for f in falls if f["long_lie_expected"]]
    no_fall_h = sum(r["no_fall_s"] for r in results) / 3600
    false_alarms = sum(len(r["false_alarms"]) for r in results)
    others = [o for r in results for o in r["other_down_events"]]
    return {
        "clips": len(results), "passed": sum(r["passed"] for r in results),
        "falls": len(falls), "detected": len(delays),
        "recall": round(len(delays) / len(falls), 3) if falls else None,
        "median_delay_s": round(float(np.median(delays)), 2) if delays else None,
        "p90_delay_s": round(float(np.percentile(delays, 90)), 2) if delays else None,
        "long_lies": len(lies), "long_lies_caught": sum(bool(f["long_lie_caught"]) for f in lies),
        "false_alarms": false_alarms, "no_fall_hours": round(no_fall_h, 3),
        "false_alarms_per_hour": round(false_alarms / no_fall_h, 1) if no_fall_h else None,
        "clips_with_false_alarms": sum(bool(r["false_alarms"]) for r in results),
        "other_down_events": len(others), "other_down_violated": sum(bool(o["alarms"]) for o in others),
    }


def table(results: list[dict]) -> str:
    rows = ["| clip | labelled | detected | delay | false alarms |", "|---|---|---|---|---|"]
    for r in results:
        labelled = ", ".join(f"fall {f['start_s']:.2f}-{f['on_ground_s']:.2f} s" for f in r["falls"])
        labelled += "".join(f"{', ' if labelled else ''}{o['type']}" for o in r["other_down_events"])
        detected = ", ".join(("yes" if f["detected"] else "MISSED")
                             + ("" if f["long_lie_caught"] is None else
                                f" (long lie {'caught' if f['long_lie_caught'] else 'MISSED'})") for f in r["falls"])
        delay = ", ".join("-" if f["delay"] is None else f"{f['delay']:+.2f} s" for f in r["falls"]) or "-"
        false = ", ".join(f"{a['kind']} {a['time']:.2f} s" for a in r["false_alarms"]) or "0"
        rows.append(f"| {r['clip']} | {labelled or 'no fall'} | {detected or '-'} | {delay} | {false} |")
    return "\n".join(rows)


def summary(t: dict) -> str:
    """The totals in one line. A run of clips without a labelled fall (or without footage
    outside the falls) has no recall (or rate) and says so."""
    def seconds(value):
        return "-" if value is None else f"{value} s"

    falls = (f"falls detected within {MAX_DELAY_S:g} s: {t['detected']}/{t['falls']} (recall {t['recall']:.0%}), "
             f"delay median {seconds(t['median_delay_s'])}, p90 {seconds(t['p90_delay_s'])}; "
             f"long lies caught {t['long_lies_caught']}/{t['long_lies']}" if t["falls"] else "no labelled fall")
    rate = "" if t["false_alarms_per_hour"] is None else f"{t['false_alarms_per_hour']}/h, "
    return (f"{t['clips']} clips, {t['passed']} pass; {falls}; false alarms {t['false_alarms']} "
            f"in {t['no_fall_hours'] * 60:.1f} min of no-fall footage ({rate}{t['clips_with_false_alarms']} clips); "
            f"other_down_events raising an alarm: {t['other_down_violated']}/{t['other_down_events']}")


# ------------------------------------------------------------------ timelines

STATE_COLOURS = {"upright": "#4caf50", "down": "#2196f3", "falling": "#ff9800", "fallen": "#f44336",
                 "recovered": "#9c27b0"}


def plot_timeline(path: Path, result: dict, run: ClipRun) -> None:
    """Fall score per track (top), state per track (bottom), labelled intervals, alarms."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tracks = sorted(run.tracks, key=lambda t: -len(run.tracks[t]))[:8]   # the 8 longest tracks
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 3.2), sharex=True, height_ratios=[2, 1])
    for ax in (top, bottom):
        for f in result["falls"]:
            ax.axvspan(f["start_s"], f["on_ground_s"], color="red", alpha=0.15)
            ax.axvspan(f["on_ground_s"], f["on_ground_s"] + MAX_DELAY_S, color="orange", alpha=0.15)
        for o in result["other_down_events"]:
            ax.axvspan(o["start_s"], o["end_s"], color="grey", alpha=0.12)
        for a in result["alarms"]:
            ax.axvline(a["time"], color="red" if a["kind"] == "fall_confirmed" else "purple", lw=1.2,
                       ls="-" if a not in result["false_alarms"] else "--")
    for n, track in enumerate(tracks):
        samples = run.tracks[track]
        t = [s[0] for s in samples]
        top.plot(t, [s[1] for s in samples], lw=1, label=f"track {track}")
        bottom.scatter(t, [n] * len(t), c=[STATE_COLOURS[s[2]] for s in samples], s=4, marker="s")
    top.axhline(0.5, color="black", lw=0.5, ls=":")
    top.set_ylim(0, 1.05)
    top.set_ylabel("fall score")
    top.set_title(f"{result['clip']}  (red/orange: fall, in time; grey: other down; lines: alarms)", fontsize=8)
    if tracks:
        top.legend(fontsize=6, loc="upper left", ncol=4)
    bottom.set_yticks(range(len(tracks)), [str(t) for t in tracks], fontsize=6)
    bottom.set_ylabel("state", fontsize=7)
    bottom.set_xlabel("media time, s")
    handles = [plt.Line2D([], [], marker="s", ls="", color=c, label=s) for s, c in STATE_COLOURS.items()]
    bottom.legend(handles=handles, fontsize=6, loc="upper left", ncol=5)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------ cross-validation

def _fold_score(t: dict) -> tuple:
    """How a grid point ranks on training clips: fewest false alarms and violated
    other_down_events first (an alarm nobody should act on costs trust), then most falls
    detected in time, then the shortest median delay."""
    return (-(t["false_alarms"] + t["other_down_violated"]), t["detected"], -(t["median_delay_s"] or 99))


def cross_validate(names: list[str], sources: dict[str, str], evaluate_point,
                   rates: dict[str, str] | None = None) -> dict:
    """Leave-one-source-out: for every source, the grid point best on the others, scored on it.
    `names` are the keys of `evaluate_point`'s results (their "clip"); with `rates` (key -> the
    frame rate it was seen at) the same clip at several rates is several keys of one source, a
    fold chooses on all of them, and the held-out and in-sample totals are given per rate too."""
    keys = list(CV_GRID)
    points = [dict(zip(keys, values)) for values in itertools.product(*CV_GRID.values())]
    per_point = []   # (params, {clip: result})
    for params in points:
        started = time.monotonic()
        results = evaluate_point(params)
        per_point.append((params, {r["clip"]: r for r in results}))
        print(f"  {params}: {summary(totals(results))} ({time.monotonic() - started:.0f} s)", flush=True)
    folds, held_out = [], []
    for source in sorted(set(sources.values())):
        test = [n for n in names if sources[n] == source]
        train = [n for n in names if sources[n] != source]
        best = max(per_point, key=lambda p: _fold_score(totals([p[1][n] for n in train])))
        test_results = [best[1][n] for n in test]
        held_out += test_results
        t = totals(test_results)
        folds.append({"source": source, "clips": test, "params": best[0], "falls": t["falls"],
                      "detected": t["detected"], "false_alarms": t["false_alarms"],
                      "other_down_violated": t["other_down_violated"]})
    in_sample = max(per_point, key=lambda p: _fold_score(totals(list(p[1].values()))))
    cv = {"grid": CV_GRID, "folds": folds, "held_out": totals(held_out),
          "in_sample_params": in_sample[0], "in_sample": totals(list(in_sample[1].values()))}
    if rates:
        cv["by_rate"] = {rate: {"held_out": totals([r for r in held_out if rates[r["clip"]] == rate]),
                                "in_sample": totals([r for n, r in in_sample[1].items() if rates[n] == rate])}
                         for rate in dict.fromkeys(rates.values())}
    return cv


def cv_table(cv: dict) -> str:
    rows = ["| held-out source | clips | falls detected | false alarms | other down raising | chosen on the rest |",
            "|---|---|---|---|---|---|"]
    for f in cv["folds"]:
        rows.append(f"| {f['source']} | {len(f['clips'])} | {f['detected']}/{f['falls']} | {f['false_alarms']} | "
                    f"{f['other_down_violated']} | {', '.join(f'{k} {v:g}' for k, v in f['params'].items())} |")
    return "\n".join(rows)


# ------------------------------------------------------------------ command

def add_parser(commands) -> None:
    p = commands.add_parser("falls", help="score the fall plugin on the labelled videos (per event; pose cache)")
    add_clip_arguments(p)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a fall plugin parameter, e.g. confirm_s=1.0 (repeatable)")
    p.add_argument("--cv", action="store_true", help="also leave-one-source-out cross-validation over CV_GRID")
    p.add_argument("--cv-fps", type=float, nargs="+", default=[], metavar="F",
                   help="--cv pooled over the clips at their own rate and re-encoded at these rates (e.g. 10 5 "
                   "3), so the thresholds chosen hold for slow cameras too; totals are given per rate")
    p.add_argument("-o", "--output", type=Path, default=Path("out/evaluate/falls"),
                   help="folder for falls.md, falls.json and the timelines/ PNGs")
    p.add_argument("--no-plots", action="store_true", help="skip the timeline PNGs")
    p.add_argument("--lift", action="store_true", help="the shipped 3D lifter before the plugin, with use_3d: true")
    p.add_argument("--zones", type=Path, default=clip_zones.ZONES_FILE,
                   help="zones per clip (clip file name -> a graph source's zones; default: the packaged zones.yml)")
    p.add_argument("--no-zones", action="store_true", help="no zones for any clip")
    p.set_defaults(func=command, detector=DETECTOR, keypoints=KEYPOINTS)


def command(args) -> int:
    labels, names = labelled_clips(args)
    base = parse_params(args.param, FallDetector.Params) | ({"use_3d": True} if args.lift else {})
    models = args.models or [Path(__import__("os").environ.get("STREAMPOSE_MODELS", "models"))]
    try:
        zones = {} if args.no_zones else clip_zones.load(args.zones)
    except ValueError as error:
        user_error(str(error))
    front = (args.detector, args.keypoints)
    scratches = []   # re-encoded clips live as long as these

    def at_rate(fps: float | None):
        """The clips at `fps` (None: their own rate), posed once; what scores a parameter setting on them."""
        clips, offsets, scratch = clip_files(args.videos, names, fps)
        scratches.append(scratch)
        tracked = None if args.no_cache or args.pose else track_cached(clips, args.cache, models, args.lift,
                                                                       args.precision, front)
        for n in names:   # every frame carries its stream's zones, as a graph's source gives them (run_full)
            for frame in (tracked or {}).get(Path(n).stem, []):
                frame.zones = zones.get(n, ())

        def evaluate_point(params: dict) -> tuple[list[dict], dict[str, ClipRun]]:
            runs = run_full(clips, models, params, args.lift, zones, args.pose, args.precision, front) \
                if tracked is None else run_plugin(tracked, models, params)
            for n in names:
                shift_times(runs[Path(n).stem], offsets[n])
            lie = down_alarm_s(params)
            return [judge(n, labels[n], runs[Path(n).stem], lie) for n in names], runs
        return evaluate_point

    evaluate_point = at_rate(args.fps)
    started = time.monotonic()
    results, runs = evaluate_point(base)
    elapsed = time.monotonic() - started
    t = totals(results)
    report = [f"# Fall evaluation\n\nparams: {base or 'defaults'}; "
              f"{f'pose stage {args.pose}' if args.pose else ' + '.join(front)}; "
              f"{'full graph' if args.no_cache or args.pose else 'pose cache'}; "
              f"{sum(r['frames'] for r in results)} frames in {elapsed:.0f} s\n", table(results), "", summary(t)]
    print("\n".join(report[1:]))
    out = {"params": base, "elapsed_s": round(elapsed, 1), "totals": t, "clips": results}
    if args.cv or args.cv_fps:
        sources = clip_sources(args.sources or args.labels.parent / "SOURCES.md", names)
        own = f"{args.fps:g} fps" if args.fps else "own rate"
        others = {f"{fps:g} fps": at_rate(fps) for fps in args.cv_fps}
        keys = {n: (n, own) for n in names} | {f"{n} @ {rate}": (n, rate) for rate in others for n in names}

        def evaluate_pooled(params: dict) -> list[dict]:
            pooled = evaluate_point({**base, **params})[0]
            for rate, evaluate_other in others.items():
                pooled += [{**r, "clip": f"{r['clip']} @ {rate}"} for r in evaluate_other({**base, **params})[0]]
            return pooled

        print("\nleave-one-source-out cross-validation over", CV_GRID, f"at {', '.join([own, *others])}")
        cv = cross_validate(list(keys), {k: sources[n] for k, (n, _) in keys.items()}, evaluate_pooled,
                            {k: rate for k, (_, rate) in keys.items()} if others else None)
        report += ["", "## Leave-one-source-out", "", cv_table(cv), "",
                   f"held out: {summary(cv['held_out'])}",
                   f"in sample (chosen on all clips: {cv['in_sample_params']}): {summary(cv['in_sample'])}"]
        for rate, by in cv.get("by_rate", {}).items():
            report += [f"at {rate}, held out: {summary(by['held_out'])}",
                       f"at {rate}, in sample: {summary(by['in_sample'])}"]
        print("\n".join(report[4:]))
        out["cv"] = cv
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "falls.md").write_text("\n".join(report) + "\n")
    (args.output / "falls.json").write_text(json.dumps(out, indent=1))
    if not args.no_plots:
        (args.output / "timelines").mkdir(exist_ok=True)
        for r in results:
            plot_timeline(args.output / "timelines" / f"{Path(r['clip']).stem}.png", r, runs[Path(r["clip"]).stem])
    print(f"wrote {args.output}/falls.md, falls.json{'' if args.no_plots else ', timelines/*.png'}")
    return 0 if t["passed"] == t["clips"] else 1

