"""Keypoint cache for the repetition-counter evaluation: run detector -> keypoints once per
clip, then replay tracker -> smoother -> plugin reps from the cache in seconds.

    python scripts/reps_cache.py build DIR [--clips NAME ...]     # the slow part, once
    python scripts/reps_cache.py check DIR --clip NAME             # replay == live graph on one clip
    python scripts/reps_cache.py cv DIR                            # leave-one-source-out thresholds

`build` runs the detector and keypoints stages of scripts/evaluate_reps.py's graph (same models,
same settings, every frame) over the labelled clips and stores, per clip, each frame's
detections and keypoints (DIR/<stem>.npz). `replay` feeds them through the same TrackerStage,
SmootherStage and PluginStage classes the daemon uses, with the graph's defaults, and returns
the `rep` events. scripts/evaluate_reps.py --cache DIR uses it.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import sys
import tempfile
from pathlib import Path

import numpy as np

from streampose.frame import Frame, Persons
from streampose.graph import schema
from streampose.graph.loader import load_graph
from streampose.models.folder import default_search_path
from streampose.plugins.stage import PluginStage
from streampose.runtime.pipeline import Pipeline
from streampose.runtime.stage import StageContext
from streampose.stages.smoother import SmootherStage
from streampose.stages.tracker import TrackerStage

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DETECTOR, KEYPOINTS = "picodet_s_192_lcnet_pedestrian_ov", "tinypose_128x96_ov"

BUILD_GRAPH = """\
sources:
{sources}
stages:
  - {{id: detect, type: detector, model: {detector}}}
  - {{id: pose, type: keypoints, model: {keypoints}, batch: {{max_size: 4}}}}
runtime: {{metrics: {{bind: null}}}}
"""
_EMPTY_IMAGE = np.zeros((1, 1, 3), np.uint8)


def build(videos: list[Path], cache: Path, models: Path, detector: str = DETECTOR, keypoints: str = KEYPOINTS) -> None:
    """Run detector -> keypoints over `videos` (one graph, all at once) and write cache/<stem>.npz."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reps_cache_") as workdir:
        graph = Path(workdir) / "cache.yml"
        graph.write_text(BUILD_GRAPH.format(
            sources="\n".join(f"  - {{id: {video.stem}, uri: {video}}}" for video in videos),
            detector=detector, keypoints=keypoints))
        pipeline = Pipeline(load_graph(graph), model_paths=default_search_path([models]), output_dir=Path(workdir))
        stage = pipeline.runners["pose"].stage
        records: dict[str, list[tuple]] = {video.stem: [] for video in videos}
        process = stage.process

        def recording(frames: list[Frame]) -> None:
            process(frames)
            for frame in frames:
                p = frame.persons
                records[frame.stream].append((frame.index, frame.media_time, frame.capture_time, frame.segment,
                                              p.boxes.copy(), p.scores.copy(),
                                              np.zeros((len(p), 17, 3), np.float32) if p.keypoints is None
                                              else p.keypoints.copy(),
                                              np.zeros(len(p), np.float32) if p.pose_scores is None
                                              else p.pose_scores.copy()))

        stage.process = recording
        pipeline.start()
        pipeline.wait()
    for stem, rows in records.items():
        rows.sort(key=lambda row: row[0])
        counts = np.array([len(row[4]) for row in rows], np.int64)
        np.savez_compressed(
            cache / f"{stem}.npz", models=np.array([detector, keypoints]),
            index=np.array([r[0] for r in rows], np.int64),
            media_time=np.array([r[1] for r in rows]), capture_time=np.array([r[2] for r in rows]),
            segment=np.array([r[3] for r in rows], np.int64), counts=counts,
            boxes=np.concatenate([r[4] for r in rows]).reshape(-1, 4).astype(np.float32),
            scores=np.concatenate([r[5] for r in rows]).astype(np.float32),
            keypoints=np.concatenate([r[6] for r in rows]).reshape(-1, 17, 3).astype(np.float32),
            pose_scores=np.concatenate([r[7] for r in rows]).astype(np.float32))


def cached(cache_file: Path, detector: str = DETECTOR, keypoints: str = KEYPOINTS) -> bool:
    """Whether cache_file holds the output of these models."""
    if not cache_file.is_file():
        return False
    with np.load(cache_file) as data:
        return "models" in data and list(data["models"]) == [detector, keypoints]


def frames_of(cache_file: Path) -> list[Frame]:
    """The cached frames of one clip, as the keypoints stage left them (no image)."""
    data = np.load(cache_file)
    stem, frames, start = cache_file.stem, [], 0
    for k in range(len(data["index"])):
        n = int(data["counts"][k])
        persons = Persons.from_boxes(data["boxes"][start:start + n], data["scores"][start:start + n])
        persons.keypoints = data["keypoints"][start:start + n]
        persons.pose_scores = data["pose_scores"][start:start + n]
        start += n
        frames.append(Frame(stream=stem, index=int(data["index"][k]), image=_EMPTY_IMAGE,
                            capture_time=float(data["capture_time"][k]), media_time=float(data["media_time"][k]),
                            segment=int(data["segment"][k]), persons=persons))
    return frames


def tracked(frames: list[Frame]) -> list[Frame]:
    """Tracker -> smoother (graph defaults, the daemon's stage classes) over cached frames:
    new frames, as the reps plugin stage receives them."""
    context = StageContext(graph_dir=REPO, output_dir=REPO)
    tracker = TrackerStage("track", schema.Tracker(id="track", type="tracker"), context)
    smoother = SmootherStage("smooth", schema.Smoother(id="smooth", type="smoother"), context)
    out = []
    for cached in frames:
        p = cached.persons
        persons = Persons.from_boxes(p.boxes.copy(), p.scores.copy())
        persons.keypoints, persons.pose_scores = p.keypoints.copy(), p.pose_scores.copy()
        frame = Frame(stream=cached.stream, index=cached.index, image=_EMPTY_IMAGE, capture_time=cached.capture_time,
                      media_time=cached.media_time, segment=cached.segment, persons=persons)
        tracker.process([frame])
        smoother.process([frame])
        out.append(frame)
    return out


def count(frames: list[Frame], plugin_params: dict | None = None) -> list:
    """The plugin stage (plugin reps with `plugin_params`) over tracked frames, left untouched;
    the `streampose.frame.Event`s it raised, in order."""
    context = StageContext(graph_dir=REPO, output_dir=REPO)
    stage = PluginStage("reps", schema.Plugin(id="reps", type="plugin", plugin="reps",
                                              params=plugin_params or {}), context)
    events = []
    for tracked_frame in frames:
        frame = copy.copy(tracked_frame)
        frame.persons = copy.copy(tracked_frame.persons)
        frame.persons.annotations = [{} for _ in range(len(frame.persons))]
        frame.events, frame.ended_tracks = [], list(tracked_frame.ended_tracks)
        stage.process([frame])
        events += frame.events
    return events


def replay(frames: list[Frame], plugin_params: dict | None = None) -> list:
    """Tracker -> smoother -> plugin reps over cached frames: the events."""
    return count(tracked(frames), plugin_params)


# The parameters cross-validation chooses, and the values it tries (the other parameters keep
# their defaults). Each mainly moves one exercise's counts, so they are scanned one at a time.
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


def sources(media: Path) -> dict[str, str]:
    """Clip file name -> the repository it comes from (SOURCES.md); the project's first nine
    clips, of no stated repository, are a source each."""
    found = {}
    for line in (media / "SOURCES.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) > 2 and "." in cells[0] and "/" in cells[1]:
            found[cells[0]] = cells[1]
    return found


def verdict(label: dict, events: list) -> tuple[bool, int, int]:
    """(counted exactly, counted, expected) for one clip's rep events under `exercise: auto`."""
    expected = label.get("reps") or {}
    reps = [e for e in events if e.kind == "rep"]
    want = sum(value["count"] for value in expected.values())
    return len(reps) == want and all(e.data["exercise"] in expected for e in reps), len(reps), want


_CV: tuple = ({}, {})   # (labels, tracked frames per clip) of cross_validate, shared with its workers


def _run(params: dict, which: list[str]) -> dict[str, tuple[bool, int, int]]:
    labels, frames = _CV
    return {clip: verdict(labels[clip], count(frames[clip], params)) for clip in which}


def cross_validate(media: Path, cache: Path, out=print, processes: int = 2) -> dict:
    """Leave-one-source-out: per held-out source, each GRID parameter is set to the middle of the
    values that count the most of the other sources' clips right; the held-out clips are then
    counted with those. Returns {"in_sample": {clip: (ok, n, want)}, "held_out": {...}, "chosen": {...}}."""
    import yaml

    labels = yaml.safe_load((media / "labels.yml").read_text())
    origin = sources(media)
    clips = [clip for clip in labels if (cache / f"{Path(clip).stem}.npz").is_file()]
    source = {clip: origin.get(clip, f"first set: {clip}") for clip in clips}
    global _CV
    _CV = labels, {clip: tracked(frames_of(cache / f"{Path(clip).stem}.npz")) for clip in clips}
    run = _run
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        jobs = [({name: value}, clips) for name, values in GRID.items() for value in values]
        done = iter(pool.starmap(_run, jobs))
    scans = {name: [next(done) for _ in values] for name, values in GRID.items()}
    held_out, chosen = {}, {}
    for held in sorted(set(source.values())):
        training = [clip for clip in clips if source[clip] != held]
        params = {}
        for name, values in GRID.items():
            scores = [sum(scan[clip][0] for clip in training) for scan in scans[name]]
            best = [value for value, score in zip(values, scores) if score == max(scores)]
            params[name] = best[len(best) // 2]
        chosen[held] = params
        held_out |= run(params, [clip for clip in clips if source[clip] == held])
    in_sample_params = {}
    for name, values in GRID.items():
        scores = [sum(scan[clip][0] for clip in clips) for scan in scans[name]]
        best = [value for value, score in zip(values, scores) if score == max(scores)]
        in_sample_params[name] = best[len(best) // 2]
        out(f"{name}: all-clip scores {dict(zip(values, scores))} -> {in_sample_params[name]}")
    return {"in_sample": run({}, clips), "in_sample_best": run(in_sample_params, clips),
            "held_out": held_out, "chosen": chosen, "best": in_sample_params, "source": source, "labels": labels}


def main(argv: list[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "check", "cv"])
    parser.add_argument("cache", type=Path)
    parser.add_argument("--media", type=Path, default=SHARED / "media")
    parser.add_argument("--models", type=Path, default=SHARED / "models")
    parser.add_argument("--clips", nargs="+")
    parser.add_argument("--clip", default="squat_side_view.mp4")
    args = parser.parse_args(argv)
    labels = yaml.safe_load((args.media / "labels.yml").read_text())
    if args.command == "build":
        clips = args.clips or list(labels)
        build([args.media / "video" / clip for clip in clips], args.cache, args.models)
        return 0
    if args.command == "cv":
        result = cross_validate(args.media, args.cache)
        print("\n| clip | source | expected | in-sample (defaults) | held-out source |\n|---|---|---|---|---|")
        for clip, (ok, n, want) in result["in_sample"].items():
            held_ok, held_n, _ = result["held_out"][clip]
            if want or n or held_n:
                print(f"| {Path(clip).stem} | {result['source'][clip]} | {want} | {n}{'' if ok else ' **x**'} | "
                      f"{held_n}{'' if held_ok else ' **x**'} |")
        wrong = {name: [Path(c).stem for c, v in result[name].items() if not v[0]]
                 for name in ("in_sample", "in_sample_best", "held_out")}
        print(f"\nclips wrong: {wrong}")
        print("chosen per held-out source:")
        for held, params in result["chosen"].items():
            print(f"  {held}: {params}")
        return 0 if not any(wrong.values()) else 1
    sys.path.insert(0, str(REPO / "scripts"))
    from evaluate_reps import run_graph
    video = args.media / "video" / args.clip
    with tempfile.TemporaryDirectory() as workdir:
        live = run_graph([video], args.models, DETECTOR, KEYPOINTS, "auto", Path(workdir), None)[video.stem]
    replayed = replay(frames_of(args.cache / f"{video.stem}.npz"))
    a = [(m["track_id"], round(m["media_time"], 6), m["data"]) for m in live]
    b = [(e.track_id, round(e.media_time, 6), e.data) for e in replayed if e.kind == "rep"]
    print(f"live {len(a)} events, replay {len(b)} events, equal: {a == b}")
    for row in zip(a, b):
        print(row)
    return 0 if a == b else 1


if __name__ == "__main__":
    sys.exit(main())
