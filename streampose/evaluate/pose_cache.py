"""A per-clip cache of what the detector and keypoint stages find, and its replay.

Detection and keypoints are nearly all the cost of an evaluation (about 16 frames/s on two CPU
cores) and do not change while the stages after them are tuned. `build` runs the real
detector -> keypoints graph once over the clips that have no cache entry yet, all clips as
sources of one graph as in a full evaluation, and stores one `.npz` per clip: for every
frame its index, segment, media time, image size, the untracked persons (boxes, scores,
keypoints, pose scores; concatenated, with per-frame offsets) and a 32x24 thumbnail of the
image (the tracker's cut detector reads only that much of it: `streampose.tracking.cuts`).
The picture inside a clip's black bars (Frame.picture) is not kept: `pictures` finds it again
from the clip's frames, as the source does. An entry's file name holds a digest of the clip's bytes, the two models' files and the stage
settings, so a changed model, setting or clip is a new entry and stale ones are never read.

`replay` feeds the cached frames through the same stage classes a graph runs (tracker,
smoother, plugin...), in the same order, with the same stream events, in-process and with
no threads: seconds for all clips instead of a quarter of an hour. The replayed frame's image is
the thumbnail scaled back to the frame's size, which the cut detector scales down to a
thumbnail again: not the same pixels (it samples every 4th pixel, so grey levels differ by up
to 34 at the edges of the thumbnail's pixels), but the same layout: on all cached clips the
cut similarity of consecutive replayed frames is within 0.015 of the cached thumbnails' own,
and the replay raises the full graph's alarms (tests/test_fall.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streampose.frame import Frame, Persons, StreamEvent
from streampose.graph import schema
from streampose.graph.loader import load_graph
from streampose.models.folder import default_search_path, find_model
from streampose.posenets.networks import DEFAULT_MODELS
from streampose.runtime.pipeline import Pipeline
from streampose.runtime.stage import Stage, StageContext
from streampose.sources.capture import Capture
from streampose.tracking.cuts import THUMBNAIL_SIZE, thumbnail

# Bump when what an entry holds changes.
CACHE_VERSION = 1
DEFAULT_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streampose" / "eval"

POSE_GRAPH = """\
# Written by streampose.evaluate.pose_cache: the detector and keypoint stages of the evaluation graph.
sources: {sources}
stages:
  - {{id: detect, type: detector, model: {detector}, precision: {precision}, batch: {{max_size: 4}}}}
  - {{id: pose, type: keypoints, model: {keypoints}, precision: {precision}, batch: {{max_size: 4}}}}
runtime: {{metrics: {{bind: null}}, log_level: warning}}
"""


def stream_id(clip: Path) -> str:
    return clip.stem


def _file_digest(path: Path, digest) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def entry_key(clip: Path, detector: str, keypoints: str, model_paths: list[Path], precision: str = "fp32") -> str:
    """Digest of everything an entry depends on: the clip's bytes, every file of both model
    folders, the stage settings (the networks' precision among them) and the cache version."""
    digest = hashlib.sha256(f"{CACHE_VERSION}\n{POSE_GRAPH}\n{detector}\n{keypoints}\n{precision}\n".encode())
    _file_digest(clip, digest)
    for name in (detector, keypoints):
        folder = find_model(name, model_paths).path
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(folder)).encode())
            _file_digest(file, digest)
    return digest.hexdigest()[:16]


@dataclass
class CachedClip:
    """One clip's frames as cached (arrays per frame, persons concatenated)."""

    stream: str
    index: np.ndarray        # (F,) frame index
    segment: np.ndarray      # (F,)
    media_time: np.ndarray   # (F,) seconds
    size: np.ndarray         # (F, 2) width, height
    offsets: np.ndarray      # (F + 1,) rows of frame f: offsets[f]:offsets[f + 1]
    boxes: np.ndarray        # (P, 4)
    scores: np.ndarray       # (P,)
    keypoints: np.ndarray    # (P, 17, 3)
    pose_scores: np.ndarray  # (P,)
    thumbnails: np.ndarray   # (F, 24, 32, 3) uint8 BGR

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **{k: v for k, v in self.__dict__.items() if k != "stream"},
                            stream=np.array(self.stream))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CachedClip:
        with np.load(path) as data:
            fields = {k: data[k] for k in data.files}
        fields["stream"] = str(fields["stream"])
        return cls(**fields)

    def __len__(self) -> int:
        return len(self.index)

    def frames(self) -> Iterator[Frame]:
        """The cached frames, as the keypoint stage handed them on (untracked persons)."""
        for f in range(len(self)):
            rows = slice(self.offsets[f], self.offsets[f + 1])
            width, height = (int(v) for v in self.size[f])
            persons = Persons.from_boxes(self.boxes[rows], self.scores[rows])
            persons.keypoints, persons.pose_scores = self.keypoints[rows].copy(), self.pose_scores[rows].copy()
            image = cv2.resize(self.thumbnails[f], (width, height), interpolation=cv2.INTER_NEAREST)
            yield Frame(stream=self.stream, index=int(self.index[f]), image=image, capture_time=0.0,
                        media_time=float(self.media_time[f]), segment=int(self.segment[f]), persons=persons)


class _Recorder(Pipeline):
    """The pose graph, keeping every frame that leaves the keypoint stage."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: dict[str, list[tuple]] = {sid: [] for sid in self.streams}

    def _on_processed(self, frame: Frame) -> None:
        p = frame.persons
        keypoints = p.keypoints if p.keypoints is not None else np.zeros((len(p), 17, 3), np.float32)
        pose_scores = p.pose_scores if p.pose_scores is not None else np.zeros(len(p), np.float32)
        self.seen[frame.stream].append((frame.index, frame.segment, frame.media_time, frame.width, frame.height,
                                        p.boxes.copy(), p.scores.copy(), keypoints.copy(), pose_scores.copy(),
                                        thumbnail(frame.image)))
        super()._on_processed(frame)


def _pack(stream: str, seen: list[tuple]) -> CachedClip:
    seen = sorted(seen, key=lambda item: item[0])
    counts = [len(item[5]) for item in seen]
    return CachedClip(
        stream=stream,
        index=np.array([s[0] for s in seen], np.int64), segment=np.array([s[1] for s in seen], np.int64),
        media_time=np.array([s[2] for s in seen], np.float64), size=np.array([s[3:5] for s in seen], np.int64),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        boxes=np.concatenate([s[5] for s in seen] or [np.zeros((0, 4))]).astype(np.float32).reshape(-1, 4),
        scores=np.concatenate([s[6] for s in seen] or [np.zeros(0)]).astype(np.float32),
        keypoints=np.concatenate([s[7] for s in seen] or [np.zeros((0, 17, 3))]).astype(np.float32).reshape(-1, 17, 3),
        pose_scores=np.concatenate([s[8] for s in seen] or [np.zeros(0)]).astype(np.float32),
        thumbnails=np.stack([s[9] for s in seen]) if seen else np.zeros((0, THUMBNAIL_SIZE[1], THUMBNAIL_SIZE[0], 3),
                                                                          np.uint8))


def build(clips: list[Path], cache_dir: Path, detector: str, keypoints: str, models: list[Path],
          precision: str = "fp32", log: Callable[[str], None] = print) -> dict[Path, Path]:
    """Cache entries for `clips` (clip -> .npz path), running the pose graph, its networks at
    `precision`, over the missing ones."""
    model_paths = default_search_path(models)
    cache_dir.mkdir(parents=True, exist_ok=True)
    entries = {c: cache_dir / f"{stream_id(c)}.{entry_key(c, detector, keypoints, model_paths, precision)}.npz"
               for c in clips}
    missing = [c for c, path in entries.items() if not path.is_file()]
    if missing:
        log(f"pose cache: running {detector} -> {keypoints} over {len(missing)} clip(s) into {cache_dir}")
        graph_path = cache_dir / "pose_graph.yml"
        sources = [{"id": stream_id(c), "uri": str(c)} for c in missing]
        graph_path.write_text(POSE_GRAPH.format(sources=json.dumps(sources), detector=detector, keypoints=keypoints,
                                                precision=precision))
        pipeline = _Recorder(load_graph(graph_path), model_paths=model_paths, output_dir=cache_dir)
        started = time.monotonic()
        pipeline.start()
        if not pipeline.wait():
            raise RuntimeError("the pose graph did not finish")
        frames = sum(len(v) for v in pipeline.seen.values())
        log(f"pose cache: {frames} frames in {time.monotonic() - started:.0f} s")
        for clip in missing:
            _pack(stream_id(clip), pipeline.seen[stream_id(clip)]).save(entries[clip])
    return entries


def pictures(clip: Path) -> dict[int, tuple[int, int, int, int] | None]:
    """Frame index -> the part of the clip's frames inside their black bars (Frame.picture), found
    as the graph's source finds it (sources.capture, vision.bars): an entry keeps no full frames
    to find it in. Decodes the clip: 40-60 s for all labelled clips on two cores."""
    capture = Capture(schema.Source(id=stream_id(clip), uri=str(clip)), clip.parent, count=lambda name: None)
    return {item.index: item.picture for item in capture.frames(threading.Event()) if isinstance(item, Frame)}


def replay(cached: list[CachedClip], stages: list[Stage]) -> Iterator[Frame]:
    """Every cached frame through `stages` (see replay_frames), clip after clip."""
    for clip in cached:
        yield from replay_frames(clip.stream, clip.frames(), stages)


def replay_frames(stream: str, frames: Iterable[Frame], stages: list[Stage]) -> Iterator[Frame]:
    """One stream's frames through `stages` in order, as a graph passes them (one frame a batch,
    the stream opened before its frames and ended after them); yields the finished frames.
    Events raised outside frames (Stage.emit) are dropped: the evaluation judges frames."""
    opened = StreamEvent(stream, "opened", 0)
    for stage in stages:
        stage.stream_event(opened)
    for frame in frames:
        for stage in stages:
            stage.run([frame])
        yield frame
    ended = StreamEvent(stream, "ended", 0)
    for stage in stages:
        stage.stream_event(ended)
        stage.outbox.clear()


def build_stages(graph_text: str, graph_dir: Path, model_paths: list[Path]) -> list[Stage]:
    """The stages of a graph file's text (sources are ignored), built as the pipeline builds them."""
    from streampose.stages import STAGE_CLASSES

    path = graph_dir / "replay.yml"
    path.write_text(graph_text)
    graph = load_graph(path)
    streams = [s.id for s in graph.spec.sources]
    return [STAGE_CLASSES[st.type](st.id, st, StageContext(graph_dir=graph_dir, output_dir=graph_dir,
                                                           model_paths=model_paths, streams=streams))
            for st in graph.spec.stages]


TOP_DOWN = """\
  - {{id: detect, type: detector, model: {detector}, precision: {precision}, batch: {{max_size: 4}}}}
  - {{id: pose, type: keypoints, model: {keypoints}, precision: {precision}, batch: {{max_size: 4}}}}
"""
# --pose NETWORK: a detector-free pose stage (streampose.stages.pose) in place of detect + pose.
POSE_STAGE = "  - {{id: pose, type: pose, network: {network}, model: {model}, precision: {precision}}}\n"


def front_stages(detector: str, keypoints: str, network: str | None = None, precision: str = "fp32") -> str:
    """The graph stages that find persons and their keypoints, for an evaluation's full graph:
    detector + keypoints, or the pose stage with `network` (its shared model folder), their
    networks at `precision`."""
    if network is None:
        return TOP_DOWN.format(detector=detector, keypoints=keypoints, precision=precision)
    return POSE_STAGE.format(network=network, model=DEFAULT_MODELS[network], precision=precision)
