"""Sources against real media: files, images, damaged files and a real RTSP server."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import IMAGES, VIDEOS
from rtsp_server import free_port

from streampose.frame import Frame, StreamEvent
from streampose.graph import schema
from streampose.runtime.metrics import Metrics
from streampose.sources.capture import Capture, backoff_delays

SMALL_VIDEO = VIDEOS / "fall_room_chair_320x240.mp4"  # 193 frames at 10 fps, moov atom at the end
FASTSTART_VIDEO = VIDEOS / "office_man_walking_1280x720.mp4"  # moov atom first: still opens when truncated

# Short waits so that losing and regaining a stream takes seconds.
QUICK_RECONNECT = {"open_timeout_s": 5, "read_timeout_s": 1,
                   "reconnect": {"initial_s": 0.2, "factor": 2, "max_s": 0.5}}


def make_capture(uri, graph_dir: Path = Path("."), stream: str = "s", **options) -> tuple[Capture, Metrics]:
    metrics = Metrics()
    spec = schema.Source(id=stream, uri=str(uri), options=options)
    return Capture(spec, graph_dir, lambda name: metrics.inc(name, stream=spec.id)), metrics


def run_to_end(capture: Capture) -> tuple[list[Frame], list[StreamEvent]]:
    frames, events = [], []
    for item in capture.frames(threading.Event()):
        (events if isinstance(item, StreamEvent) else frames).append(item)
    return frames, events


def next_event(items: Iterator, frames: list[Frame] | None = None, timeout_s: float = 15.0) -> StreamEvent:
    """The next StreamEvent, keeping the frames passed on the way in `frames`."""
    deadline = time.monotonic() + timeout_s
    for item in items:
        if isinstance(item, StreamEvent):
            return item
        if frames is not None:
            frames.append(item)
        assert time.monotonic() < deadline, "no stream event in time"
    raise AssertionError("the source ended without an event")


def take_frames(items: Iterator, count: int) -> list[Frame]:
    frames = []
    for item in items:
        assert isinstance(item, Frame), f"unexpected {item}"
        frames.append(item)
        if len(frames) == count:
            return frames
    raise AssertionError(f"the source ended after {len(frames)} frames")


def probe(path: Path) -> tuple[int, int, int]:
    """(frames, width, height) as PyAV reports them."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.frames, stream.codec_context.width, stream.codec_context.height


def assert_increasing(values) -> None:
    assert np.all(np.diff(values) > 0), values


# --------------------------------------------------------------------------- files

def test_file_frames_match_pyav():
    count, width, height = probe(SMALL_VIDEO)
    capture, metrics = make_capture(SMALL_VIDEO)
    assert not capture.live

    frames, events = run_to_end(capture)

    assert [e.kind for e in events] == ["opened", "ended"]
    assert len(frames) == count == metrics.count("frames_captured", stream="s")
    assert [f.index for f in frames] == list(range(count))
    assert {f.image.shape for f in frames} == {(height, width, 3)}
    assert frames[0].image.dtype == np.uint8
    assert_increasing([f.media_time for f in frames])
    assert {f.segment for f in frames} == {0}
    assert metrics.count("decode_errors") == 0


def test_frames_carry_the_picture_inside_black_bars():
    # A 4:3 clip letterboxed in 320x240 (30 black rows above and below) and a pillarboxed
    # doorbell video; a video with no bars has none. The fall plugin takes the picture's edges
    # for the frame's (vision/bars.py).
    for clip, picture in (("adl_baby_crawling_adult_kneeling.mp4", (0, 30, 320, 210)),
                          ("fall_doorbell_porch_trip_delivery.mp4", (296, 8, 1440, 1188)),
                          ("squat_side_view.mp4", None)):
        capture, _ = make_capture(VIDEOS / clip)
        pictures = set()
        for item in capture.frames(threading.Event()):
            if isinstance(item, Frame):
                pictures.add(item.picture)
                if len(pictures) > 1 or item.index >= 60:
                    break
        assert pictures == {picture}, clip


def test_looped_file_keeps_media_time_increasing():
    count, _, _ = probe(SMALL_VIDEO)
    capture, _ = make_capture(SMALL_VIDEO, loop=True)
    stop = threading.Event()
    items = capture.frames(stop)
    assert next_event(items).kind == "opened"

    frames = take_frames(items, 2 * count + 10)
    stop.set()

    times = np.array([f.media_time for f in frames])
    assert_increasing(times)
    step = times[1] - times[0]
    # Each pass starts one frame after the previous one ended: the clip's duration later.
    np.testing.assert_allclose(times[count:2 * count] - times[:count], count * step, atol=1e-6)
    np.testing.assert_array_equal(frames[count].image, frames[0].image)
    assert [f.index for f in frames] == list(range(len(frames)))


def test_realtime_file_is_paced_at_media_time():
    capture, _ = make_capture(SMALL_VIDEO, realtime=True)
    assert capture.live
    stop = threading.Event()
    items = capture.frames(stop)
    assert next_event(items).kind == "opened"

    frames = [next(items)]
    while frames[-1].media_time - frames[0].media_time < 1.0:
        frames.append(next(items))
    stop.set()

    elapsed = frames[-1].capture_time - frames[0].capture_time
    assert 0.95 < elapsed < 1.5, elapsed
    gaps = np.diff([f.capture_time for f in frames])
    assert gaps.min() > 0.05, gaps  # 10 fps: one frame every 0.1 s, not bursts


def test_relative_path_resolves_against_graph_dir(tmp_path):
    (tmp_path / "clip.mp4").symlink_to(SMALL_VIDEO)
    frames, _ = run_to_end(make_capture("clip.mp4", graph_dir=tmp_path)[0])
    assert len(frames) == probe(SMALL_VIDEO)[0]


def only_event(capture: Capture) -> StreamEvent:
    frames, events = run_to_end(capture)
    assert frames == [] and len(events) == 1, events
    return events[0]


@pytest.mark.parametrize("content", [None, b"", b"\x00garbage" * 100], ids=["missing", "empty", "random"])
def test_an_unreadable_file_fails_its_stream_naming_the_resolved_path(tmp_path, content):
    path = tmp_path / "videos" / "clip.mp4"
    if content is not None:
        path.parent.mkdir()
        path.write_bytes(content)
    event = only_event(make_capture("videos/clip.mp4", graph_dir=tmp_path)[0])
    assert (event.kind, event.failed) == ("ended", True)
    assert event.detail.startswith("cannot open: ") and str(path) in event.detail, event.detail


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported URI scheme 'ftp'.*ftp://\\*\\*\\*@host"):
        make_capture("ftp://user:secret@host/video.mp4")


def test_a_looping_file_deleted_while_it_plays_fails_its_stream(tmp_path):
    clip = tmp_path / "clip.mp4"
    shutil.copy(SMALL_VIDEO, clip)
    items = make_capture(clip, loop=True)[0].frames(threading.Event())
    assert next_event(items).kind == "opened"
    count = probe(SMALL_VIDEO)[0]
    take_frames(items, count // 2)
    clip.unlink()
    frames = []
    event = next_event(items, frames)
    assert len(frames) == count - count // 2  # the pass already open plays to its end
    assert (event.kind, event.failed) == ("ended", True) and event.detail.startswith("cannot reopen: "), event


def test_damaged_file_skips_bad_packets(tmp_path):
    count, width, height = probe(FASTSTART_VIDEO)
    data = bytearray(FASTSTART_VIDEO.read_bytes())
    rng = np.random.default_rng(0)
    for start in range(len(data) // 4, len(data) // 2, len(data) // 20):
        data[start:start + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(data[:len(data) * 3 // 4])
    capture, metrics = make_capture("damaged.mp4", graph_dir=tmp_path)

    frames, events = run_to_end(capture)

    assert 0.3 * count < len(frames) < count
    assert {f.image.shape for f in frames} == {(height, width, 3)}
    assert metrics.count("decode_errors", stream="s") > 0
    assert [e.kind for e in events] == ["opened", "ended"]


# --------------------------------------------------------------------------- images

def test_image_glob_plays_sorted_images_at_fps():
    paths = sorted(IMAGES.glob("*.jpg"))
    capture, metrics = make_capture(IMAGES / "*.jpg", fps=4)

    frames, events = run_to_end(capture)

    assert [e.kind for e in events] == ["opened", "ended"]
    assert len(frames) == len(paths) == metrics.count("frames_captured")
    for i, (frame, path) in enumerate(zip(frames, paths)):
        np.testing.assert_array_equal(frame.image, cv2.imread(str(path)))
        assert frame.media_time == pytest.approx(i / 4)


def test_looped_image_folder_keeps_media_time_increasing():
    count = len(list(IMAGES.glob("*.jpg")))
    capture, _ = make_capture(IMAGES, loop=True, fps=10)
    stop = threading.Event()
    items = capture.frames(stop)
    assert next_event(items).kind == "opened"
    frames = take_frames(items, 2 * count + 1)
    stop.set()
    np.testing.assert_allclose([f.media_time for f in frames], np.arange(2 * count + 1) / 10)


def test_empty_glob_fails_its_stream(tmp_path):
    event = only_event(make_capture("*.png", graph_dir=tmp_path)[0])
    assert event.failed and f"no files match {tmp_path}/*.png" in event.detail


# --------------------------------------------------------------------------- live streams

def test_backoff_grows_by_factor_up_to_max():
    policy = schema.Reconnect(initial_s=0.5, factor=3, max_s=10)
    delays = backoff_delays(policy)
    assert [next(delays) for _ in range(5)] == [0.5, 1.5, 4.5, 10, 10]


def test_rtsp_reconnects_after_server_restart(rtsp_server):
    count, width, height = probe(SMALL_VIDEO)
    capture, metrics = make_capture(rtsp_server.url, stream="cam", **QUICK_RECONNECT)
    assert capture.live
    stop = threading.Event()
    items = capture.frames(stop)

    opened = next_event(items)
    assert (opened.kind, opened.segment) == ("opened", 0)
    before = take_frames(items, 15)
    assert {f.image.shape for f in before} == {(height, width, 3)}
    assert_increasing([f.media_time for f in before])

    rtsp_server.stop()
    lost = next_event(items, before)
    assert (lost.kind, lost.segment) == ("lost", 0)
    assert lost.detail == "stream ended"

    rtsp_server.start()
    reopened = next_event(items)
    assert (reopened.kind, reopened.segment) == ("opened", 1)
    after = take_frames(items, 5)
    stop.set()

    assert {f.segment for f in before} == {0} and {f.segment for f in after} == {1}
    assert [f.index for f in before + after] == list(range(len(before) + len(after)))
    assert metrics.count("reconnects", stream="cam") == 1
    assert metrics.count("frames_captured", stream="cam") == len(before) + len(after)


def test_rtsp_stall_is_lost_after_read_timeout(rtsp_server):
    capture, metrics = make_capture(rtsp_server.url, stream="cam", **QUICK_RECONNECT)
    stop = threading.Event()
    items = capture.frames(stop)
    assert next_event(items).kind == "opened"
    take_frames(items, 5)

    rtsp_server.pause()
    paused_at = time.monotonic()
    lost = next_event(items, [])
    # FFmpeg's RTSP demuxer gives up on the second read timeout in a row.
    assert time.monotonic() - paused_at < 3.5
    assert (lost.kind, lost.detail) == ("lost", "no data for 1 s")

    rtsp_server.resume()
    reopened = next_event(items)
    assert (reopened.kind, reopened.segment) == ("opened", 1)
    take_frames(items, 3)
    stop.set()
    assert metrics.count("reconnects", stream="cam") == 1


def test_unreachable_stream_ends_after_max_attempts():
    options = {**QUICK_RECONNECT, "reconnect": {"initial_s": 0.2, "factor": 2, "max_s": 10, "max_attempts": 3}}
    capture, _ = make_capture(f"rtsp://127.0.0.1:{free_port()}/none", **options)
    started = time.monotonic()

    _, events = run_to_end(capture)

    # Three refused attempts, with waits of 0.2 and 0.4 s between them.
    assert 0.6 <= time.monotonic() - started < 2.0
    assert [e.kind for e in events] == ["lost", "ended"]
    assert "Connection refused" in events[0].detail
    assert events[1].detail.startswith("gave up after 3 attempts")


def test_stop_interrupts_backoff_promptly():
    options = {**QUICK_RECONNECT, "reconnect": {"initial_s": 30}}
    capture, _ = make_capture(f"rtsp://127.0.0.1:{free_port()}/none", **options)
    stop = threading.Event()
    items = capture.frames(stop)
    assert next_event(items).kind == "lost"
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    assert list(items) == []
    assert time.monotonic() - started < 1.0
