import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("STREAMPOSE_SHARED", REPO.parent / "shared")).resolve()
MEDIA = SHARED / "media"
VIDEOS = MEDIA / "video"
IMAGES = MEDIA / "images"
MODELS = SHARED / "models"


@pytest.fixture(scope="session")
def shared_models() -> Path:
    assert MODELS.is_dir(), f"shared models not found at {MODELS} (set STREAMPOSE_SHARED)"
    return MODELS


@pytest.fixture
def rtsp_server():
    """A real RTSP server (gst-rtsp-server) on 127.0.0.1 looping a small shared video."""
    from rtsp_server import RtspServer
    with RtspServer(VIDEOS / "fall_room_chair_320x240.mp4") as server:
        yield server


def first_frames(video: Path, count: int) -> list:
    """A video's first `count` frames as (BGR image (H, W, 3) uint8, media time in seconds)."""
    import av

    frames = []
    with av.open(str(video)) as container:
        for decoded in container.decode(video=0):
            frames.append((decoded.to_ndarray(format="bgr24"), float(decoded.time)))
            if len(frames) == count:
                break
    return frames


class FailOnce:
    """Makes a real engine raise on its `on_run`-th run, once, as a device fault would."""

    def __init__(self, engine, on_run: int):
        self.real_run, self.on_run, self.runs = engine.run, on_run, 0
        engine.run = self

    def __call__(self, feed: dict) -> dict:
        self.runs += 1
        if self.runs == self.on_run:
            raise RuntimeError("injected engine fault")
        return self.real_run(feed)


def run_in_runner(stage, frames: list):
    """`frames` through the runtime's StageRunner, in the stage's batches (it retries a batch
    that raised frame by frame), closing the stage at the end; returns the runner's Metrics."""
    import queue

    from streampose.runtime.metrics import Metrics
    from streampose.runtime.runner import STOP, StageRunner

    inbox = queue.Queue()
    for frame in frames:
        inbox.put(frame)
    inbox.put(STOP)
    metrics = Metrics()
    runner = StageRunner(stage, inbox, upstreams=1, metrics=metrics, on_processed=lambda frame: None)
    runner.start()
    runner.thread.join(60)
    assert not runner.thread.is_alive()
    return metrics


def use_stage(monkeypatch, type_name: str, cls) -> None:
    """Graphs built in this test run `cls` for stages of `type_name`."""
    from streampose.runtime import stage

    original = stage.stage_class
    monkeypatch.setattr(stage, "stage_class", lambda params: cls if params.type == type_name else original(params))
