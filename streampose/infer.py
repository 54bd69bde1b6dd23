"""`streampose infer`: run a graph's processing stages over one input and write what they find.

The input is an image, a folder of images, a video file, a network stream (rtsp://...) or a
webcam (/dev/video0). Videos, streams and webcams are opened by the Capture the daemon's sources
use. The stages run one frame at a time in the calling thread, with no queues, sockets or
recorders: a quick way to see what the models produce. Outputs: annotated copies (one JPEG per
image, one MP4 per video or stream) and, on request, each frame's pose message (the published
schema, docs/messages.md) as one JSON line.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import av
import cv2
from tqdm import tqdm

from streampose import messages
from streampose.frame import Frame, StreamEvent
from streampose.graph import schema
from streampose.graph.loader import LoadedGraph, load_graph
from streampose.runtime.metrics import Metrics
from streampose.runtime.stage import StageContext
from streampose.sinks.draw import draw_frame
from streampose.sinks.recorder import Mp4Writer
from streampose.sources.capture import NETWORK_SCHEMES, WEBCAM_PREFIX, Capture
from streampose.sources.images import IMAGE_SUFFIXES, find_images
from streampose.sources.urls import mask_credentials
from streampose.stages import STAGE_CLASSES

# Packaged beside this module, so that it is found from any folder and in a pip install, where
# the repository's graphs/ folder is not.
DEFAULT_GRAPH = "infer_graph.yml"
SINK_TYPES = {"publisher", "recorder", "jsonl", "clips"}
# Still images have no time: only the stages that work on one frame alone run on them.
IMAGE_TYPES = {"detector", "keypoints", "pose"}
INPUT_KINDS = (f"an image, a folder of images, a video file, a stream URL "
               f"({', '.join(scheme + '://' for scheme in NETWORK_SCHEMES)}) or a webcam ({WEBCAM_PREFIX}0, or 0)")


class InputError(ValueError):
    """The input cannot be read; the message names it and what to do."""


def load_infer_graph(graph_path: Path | None, overrides: list[str] = ()) -> LoadedGraph:
    """The graph at `graph_path`, or the packaged default graph when None."""
    if graph_path is not None:
        return load_graph(graph_path, overrides)
    with resources.as_file(resources.files("streampose").joinpath(DEFAULT_GRAPH)) as path:
        return load_graph(path, overrides)


class Inference:
    """A graph's processing stages over one input. Construction checks the input and loads the
    models, so bad input fails before any work; `run` then processes the frames."""

    def __init__(self, source: str, graph_path: Path | None, output_dir: Path, model_paths: list[Path],
                 overrides: list[str] = (), jsonl: Path | None = None):
        graph = load_infer_graph(graph_path, overrides)
        metrics = Metrics()
        self.media = open_input(source, output_dir, metrics)
        context = StageContext(graph_dir=graph.path.parent, output_dir=output_dir, model_paths=model_paths,
                               streams=self.media.streams, metrics=metrics)
        wanted = IMAGE_TYPES if isinstance(self.media, StillImages) else set(STAGE_CLASSES) - SINK_TYPES
        self.stages = [STAGE_CLASSES[s.type](s.id, s, context) for s in graph.spec.stages if s.type in wanted]
        output_dir.mkdir(parents=True, exist_ok=True)
        # Opened here, after everything else that can fail, so that an unwritable path is bad
        # input and a failed start leaves an earlier run's file as it was.
        self.jsonl = jsonl
        self._lines = None
        if jsonl is not None:
            try:
                jsonl.parent.mkdir(parents=True, exist_ok=True)
                self._lines = jsonl.open("wb")
            except OSError as error:
                raise InputError(f"--jsonl {jsonl}: cannot write it ({error.strerror}); give a writable path") from None

    def run(self, stop: threading.Event, max_frames: int | None = None,
            duration_s: float | None = None) -> list[Path]:
        """Processes frames until the input ends, `max_frames` are done, `duration_s` seconds have
        passed or `stop` is set; returns the files written, which are complete whichever ended it."""
        known = [count for count in (self.media.total, max_frames) if count is not None]
        total = min(known) if known else None
        done = 0
        with ExitStack() as stack:
            stack.callback(self._close_stages)
            lines = stack.enter_context(self._lines) if self._lines else None
            stack.callback(self.media.close)
            if duration_s is not None:
                timer = threading.Timer(duration_s, stop.set)
                timer.daemon = True
                timer.start()
                stack.callback(timer.cancel)
            # disable=None: the bar shows only when stderr is a terminal, so logs and pipes get no
            # carriage-return redraws.
            bar = stack.enter_context(tqdm(total=total, desc=self.media.name, unit=" frames", disable=None))
            for item in stack.enter_context(closing(self.media.items(stop))):
                if isinstance(item, StreamEvent):
                    for stage in self.stages:
                        stage.on_stream_event(item)
                    continue
                self._process(item)
                self.media.write(item)
                if lines is not None:
                    # Flushed per line, so what was processed is on disk even if the process is killed.
                    lines.write(messages.encode(messages.pose_message(item), "json") + b"\n")
                    lines.flush()
                bar.update()
                done += 1
                if done == max_frames:
                    break
        return self.media.written + ([self.jsonl] if self.jsonl else [])

    def _process(self, frame: Frame) -> None:
        for stage in self.stages:
            started = time.perf_counter()
            stage.process([frame])
            # As the runtime records them, so the JSON lines carry the same timings as published messages.
            frame.timings[stage.id] = time.perf_counter() - started

    def _close_stages(self) -> None:
        for stage in self.stages:
            stage.close()


def open_input(source: str, output_dir: Path, metrics: Metrics) -> StillImages | Video:
    """The images or video `source` names; raises InputError when a local path does not exist."""
    if source.isdigit() and not Path(source).exists():
        source = f"{WEBCAM_PREFIX}{source}"  # webcam N, as OpenCV numbers them
    if "://" in source or source.startswith(WEBCAM_PREFIX):
        return Video(source, output_dir, metrics)
    path = Path(source)
    if not path.exists():
        raise InputError(f"{source}: no such file or folder; give {INPUT_KINDS}")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return StillImages(path, output_dir)
    return Video(source, output_dir, metrics)


def stream_id(uri: str) -> str:
    """A stream id naming the input (messages allow [A-Za-z0-9_.-]): the file or URL path's last
    part without its suffix, else the URL's host."""
    url = urlsplit(uri) if "://" in uri else None
    name = Path(url.path if url else uri).stem or (url.hostname if url else "") or "input"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class StillImages:
    """An image or a folder of images. Each image is its own stream and is drawn to a JPEG."""

    def __init__(self, path: Path, output_dir: Path):
        self.paths = find_images(path) if path.is_dir() else [path]
        self.streams = [stream_id(p.name) for p in self.paths]
        self.name = path.name
        self.total = len(self.paths)
        self.written: list[Path] = []
        self._output_dir = output_dir

    def items(self, stop: threading.Event) -> Iterator[Frame]:
        for index, (path, stream) in enumerate(zip(self.paths, self.streams)):
            if stop.is_set():
                return
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise InputError(f"{path}: cannot read the image; give a readable "
                                 f"{', '.join(sorted(IMAGE_SUFFIXES))} file")
            yield Frame(stream=stream, index=index, image=image, capture_time=time.time(), media_time=0.0)

    def write(self, frame: Frame) -> None:
        out = self._output_dir / f"{self.paths[frame.index].stem}_pose.jpg"
        cv2.imwrite(str(out), draw_frame(frame))
        self.written.append(out)

    def close(self) -> None:
        """Each image was written whole."""


class Video:
    """A video file, network stream or webcam, read by the daemon's Capture (live inputs reopen
    after a loss as in the daemon), drawn to one MP4."""

    def __init__(self, uri: str, output_dir: Path, metrics: Metrics):
        self.uri = uri
        self.name = self.stream = stream_id(uri)
        self.streams = [self.stream]
        # Relative paths resolve against the working directory, as a user typing them expects.
        self.capture = Capture(schema.Source(id=self.stream, uri=uri), Path.cwd(), metrics)
        self.total = None if self.capture.live else _frame_count(Path(uri))
        self._path = output_dir / f"{self.stream}_pose.mp4"
        self._video: Mp4Writer | None = None

    def items(self, stop: threading.Event) -> Iterator[Frame | StreamEvent]:
        """The capture's frames and stream events; raises InputError when the input ends or is
        lost before its first frame (a stream that never opened, a file without frames)."""
        started = False
        for item in self.capture.frames(stop):
            if isinstance(item, StreamEvent) and item.kind in ("lost", "ended") and not started:
                fix = ("check the address or device, and that the camera or stream is up" if self.capture.live
                       else "give a video file that has frames")
                raise InputError(f"{mask_credentials(self.uri)}: {item.detail}; {fix}")
            started = started or isinstance(item, Frame)
            yield item

    def write(self, frame: Frame) -> None:
        if self._video is None:
            self._video = Mp4Writer(self._path, frame.width, frame.height, crf=23, preset="veryfast")
        self._video.write(draw_frame(frame), frame.media_time)

    def close(self) -> None:
        if self._video is not None:
            self._video.close()

    @property
    def written(self) -> list[Path]:
        return [self._path] if self._video is not None else []


def _frame_count(path: Path) -> int | None:
    """The frames of a video file as its container states them; None when it does not say."""
    with av.open(str(path)) as container:
        return container.streams.video[0].frames or None
