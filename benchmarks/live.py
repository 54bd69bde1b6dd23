"""How many live 25 fps streams the machine keeps up with: every frame processed, end-to-end
p95 under 150 ms, recorder on.

    STREAMPOSE_MODELS=../shared/models .venv/bin/python -m benchmarks.live [--streams 1 2 3 4] [--measure-s 20]
        [--precision fp32|auto] [--recorder x264|copy|none]

The four 1-2 person clips of issue 17 (office, squat, jumping jacks, two persons) are resampled
to 25 fps once, then played live (`realtime: true, loop: true`), one more stream per step, through
detector -> keypoints -> tracker -> smoother with a recorder and a jsonl sink on their own
queues. After a warm-up the run is measured for `--measure-s`: per stream the share of captured
frames the pose path processed (drops at the entrance are the frames it could not keep up with),
the recorder's own skipped frames (with copy, also the packets the source shed, packets_dropped),
and the end-to-end latency (capture to the end of the processor chain). A step passes when every
stream processed at least 99.5% of its frames and its p95 is under 150 ms. The detector's and keypoint stage's p50/p99 batch times, and their
p50/p99 time per frame of a batch (batch time / its frames, which batch sizes do not spread),
show stalls (a compile or allocation after the first frame would put p99 far above p50). Prints a Markdown
table, the machine and its load. `--precision auto` runs the networks at the engine's default
(bf16 on a CPU with native bf16, docs/models.md). `--recorder` picks the recorder: x264 (the
default: drawing, x264 veryfast), copy (the sources' packets remuxed unchanged, `encode: copy`),
or none (a sink that does nothing in its place, to show what the pose path alone keeps up with).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import streampose
from streampose.evaluate.sources import resample
from streampose.graph.loader import load_graph
from streampose.models.folder import default_search_path
from streampose.runtime.pipeline import Pipeline

SHARED = Path(os.environ.get("STREAMPOSE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CLIPS = ("office_man_walking_1280x720.mp4", "squat_side_view.mp4", "jumping_jacks_Ibbu_1.mp4",
         "mmaction2_demo_skeleton_2persons.mp4")
FPS = 25.0
MAX_P95_S = 0.150
MIN_PROCESSED = 0.995  # of captured frames: "every frame", less a frame lost at a loop's seam


RECORDER_STAGES = {"x264": 'type: recorder, path: "{stream}.mp4"',
                   "copy": 'type: recorder, encode: copy, path: "{stream}.mp4"',
                   "none": "type: noop_sink"}


def graph_text(videos: list[Path], detector: str, keypoints: str, precision: str = "fp32",
               recorder: str = "x264") -> str:
    sources = "\n".join(f"  - {{id: cam{i}, uri: '{v}', options: {{realtime: true, loop: true}}}}"
                        for i, v in enumerate(videos))
    per_stream = 2
    return f"""
sources:
{sources}
stages:
  - {{id: detect, type: detector, model: {detector}, precision: {precision}, batch: {{max_size: 8, per_stream: {per_stream}}}}}
  - {{id: pose, type: keypoints, model: {keypoints}, precision: {precision}, batch: {{max_size: 8, per_stream: {per_stream}}}}}
  - {{id: track, type: tracker}}
  - {{id: smooth, type: smoother}}
  - {{id: record, inputs: [smooth], {RECORDER_STAGES[recorder]}}}
  - {{id: log, type: jsonl, inputs: [smooth], path: "{{stream}}.jsonl"}}
runtime: {{metrics: {{bind: null}}}}
"""


def run_step(videos: list[Path], args, scratch: Path) -> list[dict]:
    graph_path = scratch / f"live_{len(videos)}.yml"
    graph_path.write_text(graph_text(videos, args.detector, args.keypoints, args.precision, args.recorder))
    pipeline = Pipeline(load_graph(graph_path), model_paths=default_search_path([]),
                        output_dir=scratch / f"out_{len(videos)}")
    metrics = pipeline.metrics
    streams = list(pipeline.streams)

    def counts() -> dict[str, tuple[int, int, int, int]]:
        return {s: (metrics.count("frames_captured", stream=s), metrics.count("frames", stage="smooth", stream=s),
                    metrics.count("sink_drops", stage="record", stream=s),
                    metrics.count("packets_dropped", stream=s)) for s in streams}

    pipeline.start()
    try:
        time.sleep(args.warmup_s)  # a benchmark, not a test: it measures a stretch of wall-clock time
        before, cpu_before, started = counts(), time.process_time(), time.monotonic()
        time.sleep(args.measure_s)
        after, cpu, elapsed = counts(), time.process_time() - cpu_before, time.monotonic() - started
        latencies = {s: metrics.quantiles("e2e_latency", since_s=args.measure_s, stream=s) for s in streams}
        stalls = {stage: metrics.quantiles("stage_latency", since_s=args.measure_s, percents=(50, 99), stage=stage)
                  for stage in ("detect", "pose")}
        per_frame = {stage: metrics.quantiles("stage_frame_latency", since_s=args.measure_s, percents=(50, 99),
                                              stage=stage) for stage in ("detect", "pose")}
    finally:
        pipeline.stop()
        pipeline.shutdown()
    rows = []
    for s, video in zip(streams, videos):
        captured, processed, skipped, shed = (a - b for a, b in zip(after[s], before[s]))
        p50, p95 = latencies[s] or (float("nan"), float("nan"))
        rows.append({"stream": video.stem, "captured": captured, "processed": processed,
                     "share": processed / max(captured, 1), "record_skipped": skipped, "packets_shed": shed,
                     "p50_ms": p50 * 1e3, "p95_ms": p95 * 1e3, "cpu_share": cpu / elapsed,
                     "stages": " ".join(f"{stage} {q[0] * 1e3:.1f}/{q[1] * 1e3:.1f}" for stage, q in stalls.items() if q),
                     "per_frame": " ".join(f"{stage} {q[0] * 1e3:.1f}/{q[1] * 1e3:.1f} ({q[1] / q[0]:.1f}x)"
                                           for stage, q in per_frame.items() if q)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--measure-s", type=float, default=20.0)
    parser.add_argument("--detector", default="picodet_s_192_lcnet_pedestrian_ov")
    parser.add_argument("--keypoints", default="tinypose_128x96_ov")
    parser.add_argument("--precision", choices=["fp32", "auto"], default="fp32")
    parser.add_argument("--recorder", choices=list(RECORDER_STAGES), default="x264",
                        help="x264: drawing and encoding; copy: the sources' packets remuxed; none: a sink that does "
                             "nothing in the recorder's place")
    args = parser.parse_args()
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
          f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"streampose from {Path(streampose.__file__).parent}")
    print(f"models: {args.detector} -> {args.keypoints} at {args.precision}; "
          f"recorder {args.recorder}; {FPS:g} fps live; measured {args.measure_s:g} s "
          f"after {args.warmup_s:g} s")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        videos = []
        for name in CLIPS:
            target = scratch / f"{Path(name).stem}_25fps.mp4"
            resample(SHARED / "media" / "video" / name, target, FPS)
            videos.append(target)
        print("\n| streams | stream | processed / captured | record skipped (packets shed) | e2e p50 / p95 ms | "
              "process CPU (cores) | batch p50/p99 ms | per frame p50/p99 ms | keeps up |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n in args.streams:
            rows = run_step([videos[i % len(videos)] for i in range(n)], args, scratch)
            ok = all(r["share"] >= MIN_PROCESSED and r["p95_ms"] < MAX_P95_S * 1e3 for r in rows)
            for r in rows:
                print(f"| {n} | {r['stream']} | {r['processed']} / {r['captured']} ({r['share']:.1%}) | "
                      f"{r['record_skipped']} ({r['packets_shed']}) | {r['p50_ms']:.0f} / {r['p95_ms']:.0f} | {r['cpu_share']:.2f} | "
                      f"{r['stages']} | {r['per_frame']} | {'yes' if ok else 'no'} |")
    print(f"\nload average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
