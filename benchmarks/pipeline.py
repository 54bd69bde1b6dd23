"""End-to-end frames/s of the pose path on a real 1-person video, every frame processed.

    .venv/bin/python benchmarks/pipeline.py [--video PATH] [--size 640x480] [--threads 2]

Re-encodes the video at the given size, then runs file -> detector -> keypoints -> jsonl
(graphs/demo.yml's models) and prints frames/s and each stage's p50/p95 latency.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import av
import cv2

from streampose.graph.loader import load_graph
from streampose.models.folder import default_search_path
from streampose.runtime.pipeline import Pipeline

SHARED = Path(os.environ.get("STREAMPOSE_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def resize_video(source: Path, target: Path, width: int, height: int) -> int:
    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        count = 0
        for frame in src.decode(video=0):
            image = cv2.resize(frame.to_ndarray(format="bgr24"), (width, height))
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
            count += 1
        out.mux(stream.encode())
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=SHARED / "media" / "video" / "squat_side_view.mp4")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--detector", default="picodet_s_192_lcnet_pedestrian_ov")
    parser.add_argument("--pose", default="tinypose_128x96_ov")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; video {args.video.name} at {args.size}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = tmp / "bench.mp4"
        frames = resize_video(args.video, video, width, height)
        graph = tmp / "bench.yml"
        graph.write_text(f"""
sources: [{{id: bench, uri: {video}}}]
stages:
  - {{id: detect, type: detector, model: {args.detector}, threads: {args.threads}}}
  - {{id: pose, type: keypoints, model: {args.pose}, threads: {args.threads}, batch: {{max_size: 8}}}}
  - {{id: log, type: jsonl}}
runtime: {{metrics: {{bind: null}}, in_flight: 4}}
""")
        # A first run warms the compiled-model cache, as a daemon's second start would be.
        for attempt in ("warm-up", "measured"):
            pipeline = Pipeline(load_graph(graph), model_paths=default_search_path(), output_dir=tmp / "out")
            start = time.perf_counter()
            pipeline.start()
            pipeline.wait()
            elapsed = time.perf_counter() - start
        processed = pipeline.metrics.count("frames", stage="log")
        assert processed == frames, (processed, frames)
        print(f"{processed} frames in {elapsed:.2f} s: {processed / elapsed:.1f} frames/s, every frame processed")
        for stage in ("detect", "pose", "log"):
            p50, p95 = pipeline.metrics.quantiles("stage_latency", stage=stage)
            print(f"  {stage}: p50 {p50 * 1e3:.2f} ms, p95 {p95 * 1e3:.2f} ms per batch")
        p50, p95 = pipeline.metrics.quantiles("e2e_latency", stream="bench")
        print(f"  end to end: p50 {p50 * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
