"""Evaluate the fall detector on the labelled videos, through the full graph.

    python scripts/evaluate_falls.py [--videos DIR] [--labels FILE] [--models DIR]
                                     [--clip NAME ...] [--fps F] [--json PATH] [--out DIR]
                                     [--detector NAME] [--keypoints NAME]

Every clip of the labels file found in the video folder becomes one source of a single
graph (file -> detector -> keypoints -> tracker -> smoother -> plugin fall -> publisher,
written to <out>/falls.yml), run with every frame processed (files are not paced in real
time). The script subscribes to the publisher and checks, per clip:

- each labelled fall raises `fall_confirmed` for the right person (the largest person of
  the last frame the event's track was seen in: each labelled clip has one main person)
  no earlier than the fall's `start_s` and no later than MAX_DELAY_S after `on_ground_s`;
- no other `fall_confirmed` is raised (clips and intervals without a labelled fall).

With --fps the clips are first re-encoded (H.264, into <out>) keeping the first frame of
every 1/F second, with their timestamps, to see how the detector fares on slower cameras.

It prints a table (clip, expected, got, delay, result) and exits 0 when every clip
passes, 1 otherwise. --json writes the same results for tests and reports.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import av
import yaml

from streampose.client import EventMessage, PoseMessage, Subscriber
from streampose.graph.loader import load_graph
from streampose.models.folder import default_search_path
from streampose.runtime.pipeline import Pipeline
from streampose.sinks.recorder import Mp4Writer

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
MAX_DELAY_S = 1.5
ALARM = "fall_confirmed"

GRAPH = """\
# Written by scripts/evaluate_falls.py: every labelled clip through the fall graph.
sources: {sources}
stages:
  - {{id: detect, type: detector, model: {detector}, batch: {{max_size: 4}}}}
  - {{id: pose, type: keypoints, model: {keypoints}, batch: {{max_size: 4}}}}
  # OC-SORT follows the body through the fall's sudden change of box shape, and weakly scored
  # detections (a detector trained on walking people scores a lying body low) may continue a
  # track at a lower overlap with its predicted box.
  - {{id: track, type: tracker, algorithm: ocsort, low_match_iou: 0.3}}
  - {{id: smooth, type: smoother}}
{lift}  - {{id: fall, type: plugin, plugin: fall, params: {{use_3d: {use_3d}}}}}
  - {{id: publish, type: publisher, bind: "tcp://127.0.0.1:*"}}
runtime: {{metrics: {{bind: null}}, log_level: warning}}
"""


@dataclass
class ClipRecord:
    """What the subscriber saw of one stream."""

    frames: int = 0
    alarms: list[EventMessage] = field(default_factory=list)
    states: Counter = field(default_factory=Counter)   # fall_state -> tracked persons in that state
    unannotated: int = 0                               # tracked persons without a fall score and state
    # track id -> (frame, box area, largest box area of that frame) at its latest sighting
    frames_largest: Counter = field(default_factory=Counter)  # track id -> frames it was the largest person

    def add_pose(self, msg: PoseMessage) -> None:
        self.frames += 1
        if not len(msg.boxes):
            return
        areas = (msg.boxes[:, 2] - msg.boxes[:, 0]) * (msg.boxes[:, 3] - msg.boxes[:, 1])
        self.frames_largest[int(msg.track_ids[int(areas.argmax())])] += 1
        for notes in msg.annotations:
            if "fall_score" in notes and "fall_state" in notes:
                self.states[notes["fall_state"]] += 1
            else:
                self.unannotated += 1

    def is_main_person(self, track_id: int) -> bool:
        """Whether the track was the largest person in more frames than any other track (a
        passing arm or a background person may be larger for a moment, not for long)."""
        if not self.frames_largest:
            return False
        return self.frames_largest[track_id] == max(self.frames_largest.values())


def stream_id(clip: str) -> str:
    return Path(clip).stem


def resample(source: Path, target: Path, fps: float) -> tuple[int, float]:
    """Write `source` to `target` keeping the first frame of every 1/fps seconds; (frames
    written, media time of the first: the written file's timestamps start at 0 there)."""
    writer, last_step, first_time = None, None, 0.0
    with av.open(str(source)) as container:
        for frame in container.decode(video=0):
            step = math.floor(frame.time * fps + 1e-6)
            if step == last_step:
                continue
            last_step = step
            image = frame.to_ndarray(format="bgr24")
            if writer is None:
                writer = Mp4Writer(target, image.shape[1], image.shape[0], crf=18, preset="veryfast")
                first_time = frame.time
            writer.write(image, frame.time)
    writer.close()
    return writer.frames, first_time


# With --lift: the default 3D lifter before the plugin, which then reads its torso angle and
# heights from the 3D joints.
LIFT_STAGE = "  - {id: lift, type: lift3d}\n"


def write_graph(clips: list[Path], out: Path, detector: str, keypoints: str, lift: bool = False) -> Path:
    sources = [{"id": stream_id(c.name), "uri": str(c)} for c in clips]
    path = out / "falls.yml"
    path.write_text(GRAPH.format(sources=json.dumps(sources), detector=detector, keypoints=keypoints,
                                 lift=LIFT_STAGE if lift else "", use_3d=str(lift).lower()))
    return path


def run_graph(graph_path: Path, models: Path, out: Path) -> tuple[dict[str, ClipRecord], float]:
    """Run the graph to the end of every clip; what was published, per stream, and the wall time."""
    graph = load_graph(graph_path)
    pipeline = Pipeline(graph, model_paths=default_search_path([models]), output_dir=out)
    endpoint = pipeline.runners["publish"].stage.endpoint
    records = {source.id: ClipRecord() for source in graph.spec.sources}
    done = threading.Event()

    def collect(subscriber: Subscriber) -> None:
        # Until the graph is done and the socket has been quiet for a moment.
        while (msg := subscriber.recv(0.2)) is not None or not done.is_set():
            if isinstance(msg, PoseMessage):
                records[msg.stream].add_pose(msg)
            elif isinstance(msg, EventMessage) and msg.kind == ALARM:
                records[msg.stream].alarms.append(msg)

    with Subscriber(endpoint, topics=("pose/", "event/")) as subscriber:
        time.sleep(0.5)   # let the subscription reach the publisher before the first frame
        collector = threading.Thread(target=collect, args=(subscriber,), name="collect")
        collector.start()
        started = time.monotonic()
        pipeline.start()
        finished = pipeline.wait()
        elapsed = time.monotonic() - started
        done.set()
        collector.join()
    if not finished:
        raise RuntimeError("the graph did not finish")
    return records, elapsed


def judge(clip: str, label: dict, record: ClipRecord, frames_expected: int, time_offset: float) -> dict:
    """One clip's result: expected falls, alarms, delays, and whether it passes. Alarm
    times are shifted by `time_offset` to the labels' timeline."""
    falls = label.get("falls") or []
    alarms = [{"time": round(a.media_time + time_offset, 2), "track_id": a.track_id,
               "main_person": record.is_main_person(a.track_id), "lost_while_down": bool(a.data.get("lost_while_down"))}
              for a in record.alarms]
    matched, delays = set(), []
    for fall in falls:
        hits = [n for n, a in enumerate(alarms) if a["main_person"]
                and fall["start_s"] <= a["time"] <= fall["on_ground_s"] + MAX_DELAY_S]
        matched.update(hits)
        delays.append(round(alarms[hits[0]]["time"] - fall["on_ground_s"], 2) if hits else None)
    unexpected = [a for n, a in enumerate(alarms) if n not in matched]
    return {
        "clip": clip,
        "falls": [{"start_s": f["start_s"], "on_ground_s": f["on_ground_s"]} for f in falls],
        "alarms": alarms,
        "delays": delays,
        "unexpected": unexpected,
        "frames": record.frames,
        "frames_expected": frames_expected,
        "states": dict(record.states),
        "unannotated": record.unannotated,
        "passed": all(d is not None for d in delays) and not unexpected,
    }


def table(results: list[dict]) -> str:
    rows = ["| clip | expected | got | delay | result |", "|---|---|---|---|---|"]
    for r in results:
        expected = ", ".join(f"fall {f['start_s']:.2f}-{f['on_ground_s']:.2f} s" for f in r["falls"]) or "no fall"
        got = ", ".join(f"{ALARM} {a['time']:.2f} s (track {a['track_id']}"
                        f"{', lost while down' if a['lost_while_down'] else ''}"
                        f"{'' if a['main_person'] else ', not the main person'})" for a in r["alarms"]) or "none"
        delay = ", ".join("missed" if d is None else f"{d:+.2f} s" for d in r["delays"]) or "-"
        rows.append(f"| {r['clip']} | {expected} | {got} | {delay} | {'ok' if r['passed'] else 'FAIL'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, default=SHARED / "media" / "video")
    parser.add_argument("--labels", type=Path, default=SHARED / "media" / "labels.yml")
    parser.add_argument("--models", type=Path, default=SHARED / "models")
    parser.add_argument("--clip", action="append", help="only this clip (file name); repeatable")
    parser.add_argument("--fps", type=float, help="re-encode the clips at this frame rate first")
    parser.add_argument("--detector", default="picodet_s_320_lcnet_pedestrian_ov")
    parser.add_argument("--keypoints", default="tinypose_128x96_ov")
    parser.add_argument("--lift", action="store_true", help="add the 3D lifter; the plugin uses 3D joints")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--out", type=Path, help="folder for the graph file and re-encoded clips "
                        "(default: a temporary one)")
    args = parser.parse_args(argv)

    if not args.labels.is_file():
        parser.error(f"labels file not found: {args.labels}")
    labels = yaml.safe_load(args.labels.read_text())
    names = args.clip or sorted(labels)
    unknown = [n for n in names if n not in labels]
    if unknown:
        parser.error(f"not in {args.labels}: {', '.join(unknown)}")
    missing = [n for n in names if not (args.videos / n).is_file()]
    if missing:
        parser.error(f"not found in {args.videos}: {', '.join(missing)}")

    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        clips = {n: (args.videos / n, labels[n]["frame_count"], 0.0) for n in names}
        if args.fps:
            for name in names:
                target = out / f"{stream_id(name)}_{args.fps:g}fps.mp4"
                clips[name] = (target, *resample(args.videos / name, target, args.fps))
        graph_path = write_graph([path for path, _, _ in clips.values()], out, args.detector, args.keypoints,
                                 args.lift)
        records, elapsed = run_graph(graph_path, args.models, out)
    results = [judge(n, labels[n], records[stream_id(clips[n][0].name)], *clips[n][1:]) for n in names]
    frames = sum(r["frames"] for r in results)
    print(table(results))
    rate = f"at {args.fps:g} fps" if args.fps else "at their own frame rates"
    print(f"\n{len(results)} clips {rate}, {frames} frames in {elapsed:.1f} s ({frames / elapsed:.1f} frames/s); "
          f"detector {args.detector}, keypoints {args.keypoints}{', 3D lifter' if args.lift else ''}; "
          f"passed {sum(r['passed'] for r in results)}"
          f"/{len(results)}")
    if args.json:
        args.json.write_text(json.dumps({"elapsed_s": round(elapsed, 2), "fps": args.fps, "detector": args.detector,
                                         "keypoints": args.keypoints, "lift": args.lift, "clips": results}, indent=1))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
