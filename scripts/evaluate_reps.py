"""Evaluate the repetition counter against the labelled shared videos, through the full graph.

    python scripts/evaluate_reps.py [--media DIR] [--models DIR] [--keypoints NAME] [--pose NETWORK]
                                    [--exercise auto|squat|push_up|jumping_jack|lunge|sit_up|burpee]
                                    [--clips NAME ...] [--record DIR] [--cache DIR]

All clips run at once as the sources of one graph: file -> detector -> keypoints ->
tracker -> smoother -> plugin reps -> publisher (an ipc socket this script subscribes
to). Every frame is processed. It prints a Markdown table: per clip, the repetitions
labelled in <media>/labels.yml and the `rep` events received (exercise, count, and the
middle of each repetition's active phase against the labelled bottoms_s), and exits
with 1 if any count differs. Clips default to every video in labels.yml; --record
writes annotated MP4s there. --cache DIR runs the detector and keypoints once per clip
(stored in DIR, see scripts/reps_cache.py) and replays tracker -> smoother -> plugin reps
from there: the same counts in seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

from streampose.client import Subscriber
from streampose.plugins.reps import EXERCISE_NAMES
from streampose.graph.loader import load_graph
from streampose.models.folder import default_search_path
from streampose.posenets.networks import DEFAULT_MODELS, NETWORK_KINDS
from streampose.runtime.pipeline import Pipeline

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

GRAPH = """\
sources:
{sources}
stages:
{front}  - {{id: track, type: tracker}}
  - {{id: smooth, type: smoother}}
  - {{id: reps, type: plugin, plugin: reps, params: {{exercise: {exercise}}}}}
  - {{id: publish, type: publisher, bind: "{bind}"}}
{record}runtime: {{metrics: {{bind: null}}}}
"""
TOP_DOWN = """\
  - {{id: detect, type: detector, model: {detector}}}
  - {{id: pose, type: keypoints, model: {keypoints}, batch: {{max_size: 4}}}}
"""
# --pose NETWORK: a detector-free pose stage in place of detect + pose.
POSE_STAGE = "  - {{id: pose, type: pose, network: {network}, model: {model}}}\n"
# Longest wait for the next event or status message. All clips run interleaved, so with the
# bottom-up network (about 60 ms a frame here) no clip ends and no rep comes for over 120 s.
SILENCE_S = 600.0
RECORD = '  - {id: record, type: recorder, inputs: [reps], path: "{stream}.mp4"}\n'


def run_graph(videos: list[Path], models: Path, detector: str, keypoints: str, exercise: str,
              workdir: Path, record: Path | None, network: str | None = None) -> dict[str, list[dict]]:
    """The `rep` event messages of each video (by stream id = file stem), in order."""
    bind = f"ipc://{workdir / 'events.sock'}"
    sources = "\n".join(f"  - {{id: {video.stem}, uri: {video}}}" for video in videos)
    graph = workdir / "reps.yml"
    front = TOP_DOWN.format(detector=detector, keypoints=keypoints) if network is None \
        else POSE_STAGE.format(network=network, model=DEFAULT_MODELS[network])
    graph.write_text(GRAPH.format(sources=sources, front=front, exercise=exercise, bind=bind,
                                  record=RECORD if record else ""))
    pipeline = Pipeline(load_graph(graph), model_paths=default_search_path([models]), output_dir=record or workdir)
    events: dict[str, list[dict]] = {video.stem: [] for video in videos}
    ended: set[str] = set()
    with Subscriber(bind, topics=("event/", "status/"), timeout_s=SILENCE_S) as subscriber:
        time.sleep(0.3)  # let the subscription reach the publisher before anything is sent
        pipeline.start()
        # A stream's "ended" status travels behind its last frame, so its events all came before.
        while ended != set(events):
            received = subscriber.recv_dict()
            if received is None:
                raise RuntimeError(f"no message for {SILENCE_S:.0f} s; streams not ended: "
                                   f"{sorted(set(events) - ended)}")
            _, message = received
            if message["type"] == "status" and message["kind"] == "ended":
                ended.add(message["stream"])
            elif message["type"] == "event" and message["kind"] == "rep":
                events[message["stream"]].append(message)
    pipeline.wait(60)
    return events


def expected_reps(label: dict, exercise: str) -> dict[str, dict]:
    """Labelled exercise -> {count, bottoms_s} that a counter of `exercise` should report."""
    return {name: value for name, value in (label.get("reps") or {}).items() if exercise in ("auto", name)}


def table(labels: dict, clips: list[str], events: dict[str, list[dict]], exercise: str) -> tuple[str, bool]:
    """A Markdown table of expected against counted repetitions, and whether all counts match."""
    rows = ["| clip | expected | counted | track: exercise x count | rep times (s) | labelled bottoms (s) | "
            "largest time error (s) |", "|---|---|---|---|---|---|---|"]
    all_match = True
    for clip in clips:
        expected = expected_reps(labels[clip], exercise)
        want = sum(value["count"] for value in expected.values())
        bottoms = sorted(t for value in expected.values() for t in value["bottoms_s"])
        got = events[Path(clip).stem]
        per_track: dict[tuple[int, str], int] = {}
        for message in got:
            key = (message["track_id"], message["data"]["exercise"])
            per_track[key] = max(per_track.get(key, 0), message["data"]["count"])
        times = sorted(message["data"]["bottom_time"] for message in got)
        exercises_match = all(name in expected for _, name in per_track) or not got
        match = len(got) == want and exercises_match
        all_match &= match
        error = max((abs(a - b) for a, b in zip(times, bottoms)), default=None) if len(times) == len(bottoms) else None
        rows.append("| {} | {} | {}{} | {} | {} | {} | {} |".format(
            Path(clip).stem, " + ".join(f"{v['count']} {k}" for k, v in expected.items()) or "0",
            len(got), "" if match else " **(differs)**",
            ", ".join(f"{tid}: {name} x {n}" for (tid, name), n in sorted(per_track.items())) or "-",
            " ".join(f"{t:.2f}" for t in times) or "-", " ".join(f"{t:.2f}" for t in bottoms) or "-",
            "-" if error is None else f"{error:.2f}"))
    return "\n".join(rows), all_match


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=SHARED / "media", help="folder with video/ and labels.yml")
    parser.add_argument("--models", type=Path, default=SHARED / "models", help="folder holding the model folders")
    parser.add_argument("--detector", default="picodet_s_192_lcnet_pedestrian_ov")
    parser.add_argument("--keypoints", default="tinypose_128x96_ov")
    parser.add_argument("--pose", choices=NETWORK_KINDS, help="a detector-free pose stage with this network "
                        "(its shared model folder) in place of --detector and --keypoints; no --cache")
    parser.add_argument("--exercise", default="auto", choices=["auto", *EXERCISE_NAMES])
    parser.add_argument("--clips", nargs="+", help="video file names from labels.yml (default: all)")
    parser.add_argument("--record", type=Path, help="write annotated MP4s into this folder")
    parser.add_argument("--cache", type=Path, help="keypoint cache folder (built where missing): replay from it")
    args = parser.parse_args(argv)

    labels_path = args.media / "labels.yml"
    if not labels_path.is_file():
        parser.error(f"no labels at {labels_path} (give --media)")
    labels = yaml.safe_load(labels_path.read_text())
    clips = args.clips or list(labels)
    unknown = [clip for clip in clips if clip not in labels]
    if unknown:
        parser.error(f"not in {labels_path}: {', '.join(unknown)}")
    videos = [args.media / "video" / clip for clip in clips]
    missing = [str(video) for video in videos if not video.is_file()]
    if missing:
        parser.error(f"videos not found: {', '.join(missing)}")

    started = time.monotonic()
    if args.cache and not args.pose:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import reps_cache

        missing = [video for video in videos
                   if not reps_cache.cached(args.cache / f"{video.stem}.npz", args.detector, args.keypoints)]
        if missing:
            reps_cache.build(missing, args.cache, args.models, args.detector, args.keypoints)
        events = {video.stem: [{"track_id": e.track_id, "data": e.data} for e in reps_cache.replay(
            reps_cache.frames_of(args.cache / f"{video.stem}.npz"), {"exercise": args.exercise}) if e.kind == "rep"]
            for video in videos}
        text, all_match = table(labels, clips, events, args.exercise)
        print(f"exercise: {args.exercise}, models: {args.detector} + {args.keypoints} (cached keypoints), "
              f"{time.monotonic() - started:.0f} s\n")
        print(text)
        return 0 if all_match else 1
    with tempfile.TemporaryDirectory(prefix="evaluate_reps_") as workdir:
        events = run_graph(videos, args.models, args.detector, args.keypoints, args.exercise, Path(workdir),
                           args.record.resolve() if args.record else None, args.pose)
    text, all_match = table(labels, clips, events, args.exercise)
    used = f"pose {args.pose} ({DEFAULT_MODELS[args.pose]})" if args.pose else f"{args.detector} + {args.keypoints}"
    print(f"exercise: {args.exercise}, models: {used}, "
          f"{time.monotonic() - started:.0f} s\n")
    print(text)
    return 0 if all_match else 1


if __name__ == "__main__":
    sys.exit(main())
