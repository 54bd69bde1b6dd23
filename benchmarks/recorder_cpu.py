"""CPU per frame of the recorder: x264 (drawing, veryfast) against copy, and what keeping packets
adds to the source's thread.

    STREAMPOSE_SHARED=../shared .venv/bin/python -m benchmarks.recorder_cpu [--clip NAME] [--rounds 3]

The clip's frames come from the graph's own source (Capture with one decoder thread, keeping
packets as it does for a copying recorder), in one Python thread. Each pass plays the clip once:
a pass with the source alone, then one per recorder, which gets every frame (`run`, then
`finish`). x264 encodes in threads of its own, so a recorder's CPU is the pass's process CPU
(time.process_time, every thread) less the source-alone pass's; copy's muxing runs in the
calling thread, whose CPU inside `run` and `finish` (time.thread_time) is printed as well. The
source's own cost of keeping packets: passes without them. CPU time, not wall-clock, so other work
on the machine moves the figures little. Prints medians over the rounds, ms per frame.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from streampose.frame import Frame
from streampose.graph import schema
from streampose.runtime.stage import StageContext
from streampose.sinks.recorder import RecorderStage
from streampose.sources.capture import Capture

SHARED = Path(os.environ.get("STREAMPOSE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
RECORDERS = {"x264 veryfast, drawn": {}, "x264 veryfast, not drawn": {"draw": False}, "copy": {"encode": "copy"}}


def play(video: Path, keep_packets: bool, recorder: RecorderStage | None = None) -> tuple[float, float, int]:
    """One pass: (process CPU ms per frame, CPU ms per frame of this thread inside the recorder's
    run and finish, frames)."""
    capture = Capture(schema.Source(id="cam", uri=str(video)), Path("."), lambda name: None, decoder_threads=1,
                      on_packets_shed=(lambda n: None) if keep_packets else None)
    process_start, in_recorder, frames = time.process_time(), 0.0, 0
    for item in capture.frames(threading.Event()):
        if isinstance(item, Frame):
            frames += 1
            if recorder is not None:
                start = time.thread_time()
                recorder.run([item])
                in_recorder += time.thread_time() - start
    if recorder is not None:
        start = time.thread_time()
        recorder.finish()
        in_recorder += time.thread_time() - start
    return (time.process_time() - process_start) * 1e3 / frames, in_recorder * 1e3 / frames, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="office_man_walking_1280x720.mp4")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    video = SHARED / "media" / "video" / args.clip
    print(f"{args.clip}; load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        without, _, _ = play(video, keep_packets=False)
        source, _, frames = play(video, keep_packets=True)
        rows.setdefault("source alone (process), packets not kept", []).append(without)
        rows.setdefault("source alone (process), packets kept", []).append(source)
        with tempfile.TemporaryDirectory() as scratch:
            for i, (name, params) in enumerate(RECORDERS.items()):
                context = StageContext(graph_dir=Path(scratch), output_dir=Path(scratch), streams=["cam"])
                spec = schema.Recorder(id="rec", type="recorder", path=f"{i}/{{stream}}.mp4", **params)
                recorder = RecorderStage("rec", spec, context)
                process, in_thread, _ = play(video, keep_packets=True, recorder=recorder)
                rows.setdefault(f"recorder {name} (process less source)", []).append(process - source)
                rows.setdefault(f"recorder {name} (calling thread only)", []).append(in_thread)
    print(f"{frames} frames, {args.rounds} rounds\n\n| what | CPU ms per frame (median) | rounds |\n|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    print(f"\nload average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
