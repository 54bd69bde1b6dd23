"""Render the documentation's example pictures into docs/images/ through the real pipeline.

    python scripts/render_examples.py [--media DIR] [--models DIR] [--out DIR]

Each example runs the processing stages of graphs/demo.yml (detector, keypoints, tracker,
smoother, fall and repetition plugins; no sinks) over the first frames of a shared video, frame
by frame, and draws one chosen frame as the recorder would, with the banners of the last
BANNER_S seconds: two people (README.md), a fall alarm (docs/falls.md), a repetition count
(docs/fitness.md). Pictures are JPEGs at most MAX_WIDTH pixels wide and MAX_BYTES long. It
prints what each chosen frame holds, and fails when a video never reaches the moment to show
(a changed model or plugin), rather than leaving a stale picture.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from streampose.frame import Event, Frame
from streampose.graph.loader import load_graph
from streampose.runtime.stage import StageContext
from streampose.sinks.draw import draw_frame
from streampose.sinks.recorder import BANNER_S
from streampose.stages import STAGE_CLASSES

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
GRAPH = REPO / "graphs" / "demo.yml"
MAX_WIDTH = 640
MAX_BYTES = 100_000
PROCESSING_STAGES = ("detector", "keypoints", "tracker", "smoother", "plugin")


@dataclass(frozen=True)
class Example:
    """A picture: `video` (relative to the media folder) drawn at the frame where the `nth`
    event of `event` kind is raised, or else at frame `index`."""

    name: str
    video: str
    event: str | None = None
    nth: int = 1
    index: int = 0


EXAMPLES = (
    Example("two_people", "video/mmaction2_demo_skeleton_2persons.mp4", index=12),
    Example("fall_alarm", "video/fall_faint_studio_1280x720.mp4", event="fall_confirmed"),
    Example("squat_count", "video/squat_side_view.mp4", index=252),  # the third squat's bottom
)


def encode_small(image: np.ndarray) -> bytes:
    """JPEG bytes of `image` shrunk to MAX_WIDTH, re-encoded at lower quality until under MAX_BYTES."""
    scale = min(1.0, MAX_WIDTH / image.shape[1])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    for quality in (90, 85, 80, 75, 70, 60, 50):
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok and len(data) <= MAX_BYTES:
            return data.tobytes()
    raise ValueError(f"cannot encode a {image.shape[1]}x{image.shape[0]} image under {MAX_BYTES} bytes")


def render(example: Example, path: Path, stages: list) -> tuple[Frame, list[Event]]:
    """The chosen frame of the video after every stage ran on it and on all frames before it,
    with the newest event of each kind and track from the last BANNER_S seconds."""
    recent: list[Event] = []
    seen = 0
    with av.open(str(path)) as container:
        for index, decoded in enumerate(container.decode(video=0)):
            frame = Frame(example.name, index, decoded.to_ndarray(format="bgr24"), 0.0, float(decoded.time))
            for stage in stages:
                stage.process([frame])
            recent = [e for e in recent + frame.events if frame.media_time - e.media_time <= BANNER_S]
            seen += sum(e.kind == example.event for e in frame.events)
            if (example.event is not None and seen >= example.nth) or (example.event is None
                                                                        and index == example.index):
                return frame, list({(e.kind, e.track_id): e for e in recent}.values())
    raise RuntimeError(f"{path}: never reached {example}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path, default=SHARED / "media", help="the shared media folder")
    parser.add_argument("--models", type=Path, default=SHARED / "models", help="folder of model folders")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="output folder")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    for example in EXAMPLES:
        path = args.media / example.video
        context = StageContext(graph_dir=GRAPH.parent, output_dir=args.out, model_paths=[args.models],
                               streams=[example.name])
        stages = [STAGE_CLASSES[s.type](s.id, s, context) for s in load_graph(GRAPH).spec.stages
                  if s.type in PROCESSING_STAGES]
        try:
            frame, banners = render(example, path, stages)
        finally:
            for stage in stages:
                stage.close()
        target = args.out / f"{example.name}.jpg"
        target.write_bytes(encode_small(draw_frame(frame, events=banners)))
        print(f"{target.relative_to(REPO) if target.is_relative_to(REPO) else target}: {path.name} frame "
              f"{frame.index} ({frame.media_time:.2f} s), {len(frame.persons)} persons, annotations "
              f"{[a for a in frame.persons.annotations if a]}, banners {[e.kind for e in banners]}, "
              f"{target.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
