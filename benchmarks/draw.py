"""CPU spent drawing a frame for a recorder and a clips sink both on (the drawn layer shared).

    .venv/bin/python benchmarks/draw.py [--clip crowd_walking_overhead.mp4] [--frames 100]

The clip's first frames go once through the detector, keypoints and tracker stages; then each
frame is drawn as a recorder draws it (fps/latency overlay, banners) and as a clips sink draws
it (neither), on a fresh copy of the frame so that nothing drawn before is reused across
repeats. CPU seconds (time.process_time, all threads) per frame, best of --repeats passes, for
the recorder alone and for both. Run it with PYTHONPATH at an older checkout to compare.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import av

from streampose.frame import Event, Frame
from streampose.graph import schema
from streampose.runtime.stage import StageContext
from streampose.sinks.draw import draw_frame
from streampose.stages.detector import DetectorStage
from streampose.stages.keypoints import KeypointStage
from streampose.stages.tracker import TrackerStage

SHARED = Path(os.environ.get("STREAMPOSE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
VIDEOS = SHARED / "media" / "video"
OVERLAY = {"fps": 25.0, "latency": "42 ms"}


def posed_frames(clip: Path, count: int) -> list[Frame]:
    context = StageContext(graph_dir=Path("."), output_dir=Path("."), model_paths=[SHARED / "models"])
    stages = [DetectorStage("det", schema.Detector(id="det", type="detector",
                                                   model="picodet_s_192_lcnet_pedestrian_ov"), context),
              KeypointStage("pose", schema.Keypoints(id="pose", type="keypoints", model="tinypose_128x96_ov"), context),
              TrackerStage("track", schema.TrackerParams(id="track", type="tracker"), context)]
    frames = []
    with av.open(str(clip)) as container:
        for index, decoded in enumerate(container.decode(video=0)):
            frame = Frame(stream="s", index=index, image=decoded.to_ndarray(format="bgr24"),
                          capture_time=time.time(), media_time=float(decoded.time))
            for stage in stages:
                stage.run([frame])
            frames.append(frame)
            if len(frames) == count:
                break
    for stage in stages:
        stage.close()
    return frames


def cpu_ms_per_frame(frames: list[Frame], sinks: int, repeats: int) -> float:
    banner = [Event("fall_confirmed", "s", 1, 0.0, 0.0, score=0.9)]
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for posed in frames:
            # A shallow copy: the same image and persons, nothing drawn yet; dropped after its
            # sinks, as the runtime drops a frame (what it holds is freed and its memory reused).
            frame = copy.copy(posed)
            draw_frame(frame, OVERLAY, banner)  # the recorder
            if sinks == 2:
                draw_frame(frame)  # clips
        best = min(best, (time.process_time() - started) / len(frames))
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default="crowd_walking_overhead.mp4")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    frames = posed_frames(VIDEOS / args.clip, args.frames)
    people = sum(len(f.persons) for f in frames) / len(frames)
    height, width = frames[0].image.shape[:2]
    print(f"{args.clip}: {len(frames)} frames {width}x{height}, {people:.1f} people per frame; "
          f"layer cached on the frame: {hasattr(frames[0], 'drawn')}")
    for sinks in (1, 2):
        print(f"{'recorder' if sinks == 1 else 'recorder + clips'}: "
              f"{cpu_ms_per_frame(frames, sinks, args.repeats):.2f} ms CPU per frame")


if __name__ == "__main__":
    main()
