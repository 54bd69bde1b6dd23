"""The runtime's own cost: frames/s through graphs of no-op stages at 640x480.

    .venv/bin/python benchmarks/runtime.py [--frames 300] [--streams 1 8]

Measures (1) decode throughput of a 640x480 H.264 file, (2) frames/s through a
graph of 1 and of 6 no-op stages for 1 and for 8 file streams (every frame
processed), and derives the runtime's cost per frame per stage from the
difference, so decoding, which both graphs share, cancels out.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import av
import cv2

from streampose.graph import schema
from streampose.graph.loader import load_graph
from streampose.runtime.pipeline import Pipeline
from streampose.sources.capture import Capture

SHARED = Path(os.environ.get("STREAMPOSE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SOURCE_VIDEO = SHARED / "media" / "video" / "office_man_walking_1280x720.mp4"


def make_640x480_video(path: Path, frames: int) -> None:
    """Re-encode the shared clip at 640x480, looping it to `frames` frames."""
    images = []
    with av.open(str(SOURCE_VIDEO)) as source:
        for frame in source.decode(video=0):
            images.append(cv2.resize(frame.to_ndarray(format="bgr24"), (640, 480)))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.options = {"preset": "veryfast"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(images[i % len(images)], format="bgr24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def decode_fps(video: Path) -> float:
    capture = Capture(schema.Source(id="bench", uri=str(video)), Path("."), lambda name: None)
    start = time.perf_counter()
    count = sum(1 for item in capture.frames(threading.Event()) if not hasattr(item, "kind"))
    return count / (time.perf_counter() - start)


def graph_fps(video: Path, streams: int, stages: int, workdir: Path) -> tuple[float, int]:
    lines = ["sources:"] + [f"  - {{id: s{i}, uri: {video}}}" for i in range(streams)]
    lines += ["stages:"] + [f"  - {{id: n{i}, type: noop}}" for i in range(stages)]
    lines += ["runtime: {metrics: {bind: null}, in_flight: 4}"]
    path = workdir / f"bench_{streams}_{stages}.yml"
    path.write_text("\n".join(lines) + "\n")
    pipeline = Pipeline(load_graph(path), output_dir=workdir / "out")
    start = time.perf_counter()
    pipeline.start()
    pipeline.wait()
    elapsed = time.perf_counter() - start
    frames = pipeline.metrics.count("frames", stage=f"n{stages - 1}")
    return frames / elapsed, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300, help="frames in the test video")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        video = workdir / "bench_640x480.mp4"
        make_640x480_video(video, args.frames)
        print(f"decode 640x480 H.264: {decode_fps(video):.0f} frames/s (one stream)")
        print("| streams | stages | frames | frames/s | runtime cost per frame per stage |")
        print("|---|---|---|---|---|")
        for streams in args.streams:
            one_fps, frames = graph_fps(video, streams, 1, workdir)
            six_fps, _ = graph_fps(video, streams, 6, workdir)
            per_stage_ms = max(1 / six_fps - 1 / one_fps, 0) / 5 * 1e3
            print(f"| {streams} | 1 | {frames} | {one_fps:.0f} | |")
            print(f"| {streams} | 6 | {frames} | {six_fps:.0f} | {per_stage_ms:.3f} ms |")


if __name__ == "__main__":
    main()
