"""`streampose infer`: run a graph's processing stages over one image, image folder
or video, and write annotated copies. No threads, sockets or recordings: a quick
way to see what the models produce.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2

from streampose.frame import Frame
from streampose.graph import schema
from streampose.graph.loader import load_graph
from streampose.runtime.metrics import Metrics
from streampose.runtime.stage import StageContext
from streampose.sinks.draw import draw_frame
from streampose.sinks.recorder import Mp4Writer
from streampose.sources.capture import Capture
from streampose.sources.images import IMAGE_SUFFIXES, find_images
from streampose.stages import STAGE_CLASSES

SINK_TYPES = {"publisher", "recorder", "jsonl", "clips"}
# Still images have no time: only the stages that work on one frame alone run on them.
IMAGE_TYPES = {"detector", "keypoints"}

log = logging.getLogger("streampose.infer")


def infer(input_path: Path, graph_path: Path, output_dir: Path, model_paths: list[Path],
          overrides: list[str] = ()) -> list[Path]:
    """Annotated outputs written under `output_dir`: one JPEG per image, one MP4 per video."""
    graph = load_graph(graph_path, overrides)
    context = StageContext(graph_dir=graph.path.parent, output_dir=output_dir, model_paths=model_paths,
                           streams=["infer"], metrics=Metrics())
    images = input_path.is_dir() or input_path.suffix.lower() in IMAGE_SUFFIXES
    wanted = IMAGE_TYPES if images else set(STAGE_CLASSES) - SINK_TYPES
    stages = [STAGE_CLASSES[s.type](s.id, s, context) for s in graph.spec.stages if s.type in wanted]
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        if images:
            return _infer_images(input_path, stages, output_dir)
        return _infer_video(input_path, stages, output_dir, context.metrics)
    finally:
        for stage in stages:
            stage.close()


def _run(stages, frame: Frame) -> None:
    for stage in stages:
        stage.process([frame])
    log.info("%s frame %d: %d persons", frame.stream, frame.index, len(frame.persons))


def _infer_images(input_path: Path, stages, output_dir: Path) -> list[Path]:
    written = []
    paths = find_images(input_path) if input_path.is_dir() else [input_path]
    for index, path in enumerate(paths):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read image {path}")
        frame = Frame(stream=path.name, index=index, image=image, capture_time=time.time(), media_time=0.0)
        _run(stages, frame)
        out = output_dir / f"{path.stem}_pose.jpg"
        cv2.imwrite(str(out), draw_frame(frame))
        written.append(out)
    return written


def _infer_video(input_path: Path, stages, output_dir: Path, metrics: Metrics) -> list[Path]:
    capture = Capture(schema.Source(id=input_path.stem, uri=str(input_path.resolve())), Path.cwd(), metrics)
    video: Mp4Writer | None = None
    try:
        for item in capture.frames(threading.Event()):
            if not isinstance(item, Frame):
                continue
            _run(stages, item)
            if video is None:
                video = Mp4Writer(output_dir / f"{input_path.stem}_pose.mp4", item.width, item.height,
                                  crf=23, preset="veryfast")
            video.write(draw_frame(item), item.media_time)
    finally:
        if video is not None:
            video.close()
    return [video.path] if video else []
