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
