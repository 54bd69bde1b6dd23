"""Event clips from real frames, decoded back with PyAV."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from conftest import VIDEOS, first_frames
from small_disk import fill, small_disk
from streampose.frame import Event, Frame, Persons, StreamEvent
from streampose.graph import schema
from streampose.graph.loader import GraphError, load_graph
from streampose.runtime.metrics import Metrics
from streampose.runtime.pipeline import Pipeline
from streampose.runtime.stage import StageContext
from streampose.sinks.clips import ClipStage
from streampose.stages import STAGE_CLASSES

VIDEO = VIDEOS / "jumping_jacks_Ibbu_1.mp4"  # 352x640, ~30.4 fps
FRAME_COUNT = 120


@pytest.fixture(scope="module")
def source_frames() -> list[tuple[np.ndarray, float]]:
    return first_frames(VIDEO, FRAME_COUNT)


def make_clips(output_dir: Path, streams=("cam",), metrics: Metrics | None = None, **params) -> ClipStage:
    context = StageContext(graph_dir=output_dir, output_dir=output_dir, streams=list(streams),
                           metrics=metrics or Metrics())
    params.setdefault("events", ["fall_confirmed"])
    return ClipStage("clips", schema.Clips(id="clips", type="clips", **params), context)


def make_frame(stream: str, index: int, image: np.ndarray, media_time: float, *kinds: str) -> Frame:
    """A frame with one tracked person, carrying an event of each of `kinds`."""
    height, width = image.shape[:2]
    persons = Persons.from_boxes(np.array([[0.2 * width, 0.1 * height, 0.8 * width, 0.95 * height]]), np.array([0.9]))
    persons.track_ids[:] = 7
    frame = Frame(stream, index, image, time.time(), media_time, persons=persons)
    frame.events = [Event(kind, stream, 7, media_time, frame.capture_time, 0.9, {"n": index}) for kind in kinds]
    return frame


def feed(stage: ClipStage, source_frames, events: dict[int, str], stream: str = "cam", count: int | None = None):
    """Pass the first `count` source frames, with an event of kind events[i] on frame i."""
    for index, (image, media_time) in enumerate(source_frames[:count]):
        kinds = [events[index]] if index in events else []
        stage.run([make_frame(stream, index, image, media_time, *kinds)])


def decode(path: Path) -> tuple[list[np.ndarray], list[float], float]:
    """(BGR images, frame times from the file's start in seconds, stream duration in seconds) of an MP4 file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
        duration = float(stream.duration * stream.time_base)
        start = float(stream.start_time * stream.time_base)  # B-frame delay: fragmented MP4s have no edit list
    return [f.to_ndarray(format="bgr24") for f in decoded], [float(f.time) - start for f in decoded], duration


def clips_in(output_dir: Path) -> list[Path]:
    return sorted(output_dir.rglob("*.mp4"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


def test_a_clip_holds_pre_and_post_roll_around_the_event_with_a_sidecar(tmp_path, source_frames):
    pre_s, post_s, event_index = 1.0, 0.5, 60
    stage = make_clips(tmp_path, pre_s=pre_s, post_s=post_s, draw=False)
    feed(stage, source_frames, {event_index: "fall_confirmed"})
    stage.finish()

    [clip] = clips_in(tmp_path)
    assert clip.parent == tmp_path / "clips" / "cam" and clip.name.endswith("_fall_confirmed.mp4")
    images, times, duration = decode(clip)
    event_time = source_frames[event_index][1]
    interval = source_frames[1][1] - source_frames[0][1]
    assert abs(duration - (pre_s + post_s)) <= 2 * interval
    expected = [(image, t) for image, t in source_frames if event_time - pre_s <= t <= event_time + post_s]
    assert len(images) == len(expected)
    # The clip plays at real speed, and its frames are the source frames of the window, in order.
    np.testing.assert_allclose(times, np.array([t for _, t in expected]) - expected[0][1], atol=1e-3)
    for image, (source, _) in zip(images, expected):
        assert psnr(image[:640, :352], source) > 30

    sidecar = json.loads(clip.with_suffix(".json").read_text())
    assert sidecar["clip"] == clip.name and sidecar["stream"] == "cam"
    assert sidecar["frames"] == len(expected) and sidecar["frames_lost"] == 0
    assert sidecar["start_media_time"] == pytest.approx(expected[0][1])
    assert sidecar["end_media_time"] == pytest.approx(expected[-1][1])
    [event] = sidecar["events"]
    assert (event["type"], event["kind"], event["stream"], event["track_id"], event["frame"]) == \
        ("event", "fall_confirmed", "cam", 7, event_index)
    assert event["media_time"] == pytest.approx(event_time, abs=1e-3)
    assert event["data"] == {"n": event_index}


def test_clips_are_annotated(tmp_path, source_frames):
    stage = make_clips(tmp_path, pre_s=0.2, post_s=0.2)
    feed(stage, source_frames, {30: "fall_confirmed"}, count=45)
    stage.finish()
    images, _, _ = decode(clips_in(tmp_path)[0])
    plain, event_time = source_frames[30]
    event_frame = images[sum(1 for _, t in source_frames if event_time - 0.2 <= t < event_time)]
    # The event banner at the top-left and the person's box change the picture; the rest is the video.
    assert psnr(event_frame[:20, :150], plain[:20, :150]) < 15
    assert psnr(event_frame[300:400, 150:250], plain[300:400, 150:250]) > 30


def test_overlapping_events_extend_one_clip_and_a_later_event_makes_another(tmp_path, source_frames):
    stage = make_clips(tmp_path, events=["fall_confirmed", "hand_raised"], pre_s=0.5, post_s=0.5)
    # 40 and 50 overlap (0.33 s apart); 52 is not chosen; 100 comes after the extended clip ended.
    feed(stage, source_frames, {40: "fall_confirmed", 50: "hand_raised", 52: "rep", 100: "fall_confirmed"})
    stage.finish()

    first, second = sorted(clips_in(tmp_path), key=lambda p: json.loads(p.with_suffix(".json").read_text())
                           ["start_media_time"])
    sidecars = [json.loads(p.with_suffix(".json").read_text()) for p in (first, second)]
    assert [e["kind"] for e in sidecars[0]["events"]] == ["fall_confirmed", "hand_raised"]
    assert [e["kind"] for e in sidecars[1]["events"]] == ["fall_confirmed"]
    times = [t for _, t in source_frames]
    interval = times[1] - times[0]
    _, _, duration = decode(first)
    assert abs(duration - (times[50] + 0.5 - (times[40] - 0.5))) <= 2 * interval
    assert sidecars[0]["end_media_time"] == pytest.approx(times[50] + 0.5, abs=interval)


def test_no_clip_without_a_chosen_event(tmp_path, source_frames):
    stage = make_clips(tmp_path, pre_s=0.5, post_s=0.5)
    feed(stage, source_frames, {10: "rep", 20: "hand_raised"}, count=40)
    stage.finish()
    assert clips_in(tmp_path) == [] and list(tmp_path.rglob("*.json")) == []


def test_the_ring_buffer_holds_pre_s_and_never_more_than_its_byte_cap(tmp_path, source_frames, caplog):
    metrics = Metrics()
    # Unbounded by the cap: the buffer spans pre_s.
    roomy = make_clips(tmp_path / "roomy", metrics=metrics, pre_s=1.0, post_s=0.5)
    feed(roomy, source_frames, {})
    assert roomy.buffer_seconds("cam") == pytest.approx(1.0, abs=0.05)

    # A long feed (20 s) against a 1 MiB cap and pre_s of 60 s: memory stays under the cap.
    cap = 1 << 20
    capped = make_clips(tmp_path / "capped", metrics=metrics, pre_s=60, post_s=0.5, max_buffer_bytes=cap)
    peak = 0
    with caplog.at_level(logging.WARNING, logger="streampose.stage.clips"):
        for index, (image, media_time) in enumerate(source_frames * 5):
            looped_time = index * (source_frames[1][1] - source_frames[0][1])
            capped.run([make_frame("cam", index, image, looped_time)])
            peak = max(peak, capped.buffer_bytes("cam"))
    assert cap * 0.9 < peak <= cap
    span = capped.buffer_seconds("cam")
    assert 0.3 < span < 10
    assert caplog.text.count("max_buffer_bytes (1.0 MiB) holds only") == 1

    # The memory is reported as gauges per stage and stream.
    gauges = {(f.name, s.labels["stage"], s.labels["stream"]): s.value
              for f in metrics.collect() if f.name.startswith("streampose_clip_buffer")
              for s in f.samples}
    assert gauges[("streampose_clip_buffer_bytes", "clips", "cam")] == capped.buffer_bytes("cam")
    assert gauges[("streampose_clip_buffer_seconds", "clips", "cam")] == pytest.approx(span)

    # A clip then gets the pre-roll that fit.
    capped.run([make_frame("cam", index + 1, image, looped_time + 0.033, "fall_confirmed")])
    capped.finish()
    [clip] = clips_in(tmp_path / "capped")
    sidecar = json.loads(clip.with_suffix(".json").read_text())
    assert sidecar["duration_s"] == pytest.approx(span, abs=0.1)
    assert sidecar["frames_lost"] == 0


def test_a_stream_gap_ends_the_clip_and_empties_the_buffer(tmp_path, source_frames):
    stage = make_clips(tmp_path, streams=("cam", "door"), pre_s=0.5, post_s=5.0)
    feed(stage, source_frames, {30: "fall_confirmed"}, count=40)
    feed(stage, source_frames, {}, stream="door", count=20)
    stage.stream_event(StreamEvent("cam", "lost", segment=0, detail="read timeout"))
    assert stage.buffer_bytes("cam") == 0 and stage.buffer_bytes("door") > 0
    [clip] = clips_in(tmp_path)
    _, times, _ = decode(clip)
    # What had come: the pre-roll, the event frame and the frames after it.
    assert len(times) == sum(1 for _, t in source_frames[:40] if t >= source_frames[30][1] - 0.5)
    stage.finish()


def test_clip_paths_stay_in_the_output_directory(tmp_path, source_frames):
    for bad, message in [("../clips/{stream}.mp4", "escapes the output directory"),
                         ("/tmp/{stream}.mp4", "escapes the output directory"),
                         ("{event}/{stream}.mp4", r"only \{stream\} may appear in folder names"),
                         ("{stream}/{segment}.mp4", r"unknown field\(s\) \['segment'\]"),
                         ("{stream}/{event}.mkv", "must end in .mp4")]:
        with pytest.raises(ValueError, match=f"clips path '{bad}'.*{message}"):
            make_clips(tmp_path, path=bad)
    with pytest.raises(ValueError, match="no {stream} field but 2 streams"):
        make_clips(tmp_path, streams=("a", "b"), path="{event}.mp4")

    # A stream id of '..' cannot climb out through {stream}.
    stage = make_clips(tmp_path / "out", streams=("..",), path="{stream}/{event}.mp4", pre_s=0)
    with pytest.raises(ValueError, match="for stream '..' escapes the output directory"):
        stage.run([make_frame("..", 0, source_frames[0][0], 0.0, "fall_confirmed")])
    # An event kind is made safe for a file name: it cannot add folders.
    stage = make_clips(tmp_path / "out", events=["../../up"], path="{stream}_{event}.mp4", pre_s=0, post_s=0)
    stage.run([make_frame("cam", 0, source_frames[0][0], 0.0, "../../up")])
    stage.finish()
    assert [p.relative_to(tmp_path / "out").as_posix() for p in clips_in(tmp_path)] == ["cam_.._.._up.mp4"]


def test_a_graph_with_a_clips_stage_loads_and_builds(tmp_path):
    def graph(clips: dict) -> Path:
        path = tmp_path / "graph.yml"
        path.write_text(yaml.safe_dump({
            "sources": [{"id": "jj", "uri": str(VIDEO)}],
            "stages": [{"id": "clips", "type": "clips", **clips}],
            "runtime": {"metrics": {"bind": None}},
        }))
        return path

    pipeline = Pipeline(load_graph(graph({"events": ["fall_confirmed"], "pre_s": 3})), output_dir=tmp_path)
    assert isinstance(pipeline.runners["clips"].stage, ClipStage) and STAGE_CLASSES["clips"] is ClipStage
    for bad, key in [({"events": []}, "events"), ({"events": ["x"], "max_buffer_bytes": 1000}, "max_buffer_bytes"),
                     ({"events": ["x"], "pre": 3}, "pre")]:
        with pytest.raises(GraphError, match=key):
            load_graph(graph(bad))


def test_a_full_disk_skips_clips_with_a_reason_and_they_come_back_after_space_is_freed(tmp_path, source_frames):
    with small_disk(tmp_path / "disk") as disk:
        stage = make_clips(disk, pre_s=0.3, post_s=0.3, path="{stream}_{event}.mp4")
        fill(disk)
        feed(stage, source_frames, {20: "fall_confirmed"}, count=40)
        assert "No space left on device" in stage.pause.reason("cam")
        assert clips_in(disk) == []

        (disk / "filler.bin").unlink()
        # Events keep coming; one is saved as a clip once the pause's first retry is due.
        deadline, index = time.monotonic() + 30, 40
        while not list(disk.glob("*.json")):
            assert time.monotonic() < deadline, "clips did not come back"
            image, _ = source_frames[index % FRAME_COUNT]
            kinds = ["fall_confirmed"] if index % 10 == 0 else []
            stage.run([make_frame("cam", index, image, index / 30, *kinds)])
            index += 1
        stage.finish()
        assert stage.pause.reason("cam") is None
        for clip in clips_in(disk):
            assert len(decode(clip)[0]) >= 9 and clip.with_suffix(".json").exists()
