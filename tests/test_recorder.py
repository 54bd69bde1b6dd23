"""The recorder writes real MP4 files; every test decodes them back with PyAV."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from streampose.frame import NUM_KEYPOINTS, Event, Frame, Persons, StreamEvent
from streampose.graph import schema
from streampose.runtime.stage import StageContext
from streampose.sinks.draw import draw_frame
from streampose.sinks.recorder import PathTemplate, RecorderStage
from conftest import VIDEOS, first_frames
from small_disk import fill, small_disk

VIDEO = VIDEOS / "fall_room_chair_320x240.mp4"  # 10 fps
FRAME_COUNT = 40


@pytest.fixture(scope="module")
def source_frames() -> list[tuple[np.ndarray, float]]:
    return first_frames(VIDEO, FRAME_COUNT)


def person_frame(stream: str, index: int, image: np.ndarray, media_time: float, segment: int = 0) -> Frame:
    """A frame with one tracked person: a box and a skeleton inside it."""
    height, width = image.shape[:2]
    box = np.array([[0.3 * width, 0.15 * height, 0.6 * width, 0.9 * height]], np.float32)
    persons = Persons.from_boxes(box, np.array([0.9]))
    persons.track_ids[:] = 3
    keypoints = np.empty((1, NUM_KEYPOINTS, 3), np.float32)
    keypoints[0, :, 0] = np.linspace(box[0, 0] + 5, box[0, 2] - 5, NUM_KEYPOINTS)
    keypoints[0, :, 1] = np.linspace(box[0, 1] + 5, box[0, 3] - 5, NUM_KEYPOINTS)
    keypoints[0, :, 2] = 0.9
    persons.keypoints = keypoints
    persons.annotations = [{"reps": index}]
    return Frame(stream, index, image, time.time(), media_time, segment=segment, persons=persons)


def make_recorder(output_dir: Path, streams=("cam",), **params) -> RecorderStage:
    context = StageContext(graph_dir=output_dir, output_dir=output_dir, streams=list(streams))
    return RecorderStage("rec", schema.Recorder(id="rec", type="recorder", **params), context)


def decode(path: Path) -> tuple[list[np.ndarray], list[float], float]:
    """(BGR images, frame times from the file's start in seconds, stream duration in seconds) of an MP4 file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = list(container.decode(stream))
        duration = float(stream.duration * stream.time_base)
        start = float(stream.start_time * stream.time_base)  # B-frame delay: fragmented MP4s have no edit list
    return [f.to_ndarray(format="bgr24") for f in decoded], [float(f.time) - start for f in decoded], duration


def recordings(output_dir: Path) -> list[Path]:
    return sorted(output_dir.rglob("*.mp4"))


def test_records_annotated_frames_at_real_speed(tmp_path, source_frames):
    recorder = make_recorder(tmp_path)
    sent = [person_frame("cam", i, image, t) for i, (image, t) in enumerate(source_frames)]
    for frame in sent:
        recorder.run([frame])
    recorder.finish()

    [path] = recordings(tmp_path)
    assert path.parent == tmp_path / "recordings" / "cam"
    images, times, duration = decode(path)
    media_times = np.array([t for _, t in source_frames])
    assert len(images) == FRAME_COUNT
    assert images[0].shape == (240, 320, 3)
    np.testing.assert_allclose(times, media_times - media_times[0], atol=1e-3)
    interval = media_times[1] - media_times[0]
    assert duration == pytest.approx(media_times[-1] - media_times[0] + interval, abs=0.02)
    # The annotations are in the file: the decoded frame is close to the drawn one, far from the raw one.
    drawn = draw_frame(sent[5], {"fps": 10.0, "latency": "0 ms"})
    annotated = np.any(drawn != source_frames[5][0], axis=2)
    decoded_error = np.abs(images[5][annotated].astype(int) - drawn[annotated]).mean()
    raw_difference = np.abs(source_frames[5][0][annotated].astype(int) - drawn[annotated]).mean()
    assert decoded_error < 25 < raw_difference


def test_timestamps_stay_increasing_through_repeats_and_drops(tmp_path, source_frames):
    media_times = [0.0, 0.1, 0.1, 0.2, 0.7, 0.8, 0.75, 0.9]  # a repeat, 4 dropped frames, a small step back
    recorder = make_recorder(tmp_path, draw=False)
    for i, t in enumerate(media_times):
        recorder.run([Frame("cam", i, source_frames[i][0], time.time(), 100.0 + t)])
    recorder.finish()

    [path] = recordings(tmp_path)
    _, times, duration = decode(path)
    assert len(times) == len(media_times)
    assert np.all(np.diff(times) > 0)
    assert times[4] == pytest.approx(0.7, abs=1e-3)  # the gap plays as a gap, not squeezed
    assert duration == pytest.approx(1.0, abs=0.02)


def test_media_time_restarting_starts_a_new_file(tmp_path, source_frames):
    recorder = make_recorder(tmp_path, path="{stream}-{segment}.mp4", draw=False)
    for i, (image, t) in enumerate(source_frames[:20]):
        recorder.run([Frame("cam", i, image, time.time(), (i % 10) * 0.1)])  # a file played twice
    recorder.finish()

    for path in (tmp_path / "cam-0.mp4", tmp_path / "cam-1.mp4"):
        images, _, duration = decode(path)
        assert len(images) == 10
        assert duration == pytest.approx(1.0, abs=0.02)


def test_segment_rotation_and_keep_files(tmp_path, source_frames):
    recorder = make_recorder(tmp_path, path="rec/{stream}/{segment:03d}.mp4", segment_s=1.0, keep_files=2)
    (tmp_path / "rec" / "cam").mkdir(parents=True)
    foreign = [tmp_path / "rec" / "cam" / "holiday.mp4", tmp_path / "rec" / "cam" / "notes.txt"]
    for path in foreign:
        path.write_bytes(b"not ours")
    for i, (image, t) in enumerate(source_frames):
        recorder.run([person_frame("cam", i, image, t)])
        if i == 25:  # files 000 and 001 are closed and retention has run once; 002 is open
            assert [p.name for p in recordings(tmp_path / "rec" / "cam")] == ["000.mp4", "001.mp4", "002.mp4",
                                                                              "holiday.mp4"]
    recorder.finish()

    kept = recordings(tmp_path / "rec" / "cam")
    assert [p.name for p in kept] == ["002.mp4", "003.mp4", "holiday.mp4"]
    assert all(path.exists() for path in foreign)
    for path in kept[:2]:
        images, _, duration = decode(path)
        assert len(images) == 10
        assert duration == pytest.approx(1.0, abs=0.02)


def test_keep_bytes_keeps_only_the_newest_when_files_are_larger(tmp_path, source_frames):
    recorder = make_recorder(tmp_path, path="{stream}_{segment}.mp4", segment_s=1.0, keep_bytes=1000)
    for i, (image, t) in enumerate(source_frames[:25]):
        recorder.run([person_frame("cam", i, image, t)])
    recorder.finish()

    [path] = recordings(tmp_path)
    assert path.name == "cam_2.mp4"
    assert len(decode(path)[0]) == 5


def test_lost_stream_finalises_file_and_reopen_starts_another(tmp_path, source_frames):
    recorder = make_recorder(tmp_path, path="{stream}/{segment}.mp4")
    for i, (image, t) in enumerate(source_frames[:15]):
        recorder.run([person_frame("cam", i, image, t)])
    recorder.stream_event(StreamEvent("cam", "lost", 0, "read timeout after 5.0 s"))

    first = tmp_path / "cam" / "0.mp4"
    assert len(decode(first)[0]) == 15  # playable before close()
    recorder.stream_event(StreamEvent("cam", "opened", 1))
    for i, (image, t) in enumerate(source_frames[15:], start=15):
        recorder.run([person_frame("cam", i, image, t, segment=1)])
    recorder.finish()

    assert len(decode(tmp_path / "cam" / "1.mp4")[0]) == FRAME_COUNT - 15
    assert len(decode(first)[0]) == 15


def test_streams_record_to_their_own_files(tmp_path, source_frames):
    recorder = make_recorder(tmp_path, streams=("a", "b"))
    for i, (image, t) in enumerate(source_frames[:12]):
        recorder.run([person_frame("a", i, image, t), person_frame("b", i, image[:, ::-1], t)])
    recorder.finish()

    for stream in ("a", "b"):
        [path] = recordings(tmp_path / "recordings" / stream)
        assert len(decode(path)[0]) == 12


def test_odd_frame_size_and_size_change(tmp_path, source_frames):
    recorder = make_recorder(tmp_path, path="{stream}-{segment}.mp4")
    for i, (image, t) in enumerate(source_frames[:10]):
        recorder.run([person_frame("cam", i, image, t)])
    for i, (image, t) in enumerate(source_frames[10:20], start=10):
        recorder.run([person_frame("cam", i, image[:237, :315], t)])
    recorder.finish()

    full, _, _ = decode(tmp_path / "cam-0.mp4")
    odd, _, _ = decode(tmp_path / "cam-1.mp4")
    assert (len(full), full[0].shape) == (10, (240, 320, 3))
    assert (len(odd), odd[0].shape) == (10, (236, 314, 3))


def test_encode_error_closes_file_and_recording_resumes(tmp_path, source_frames):
    recorder = make_recorder(tmp_path, path="{stream}-{segment}.mp4", draw=False)
    for i, (image, t) in enumerate(source_frames[:20]):
        if i == 10:
            image = image.astype(np.float64)  # the encoder takes 8-bit images only
        recorder.run([Frame("cam", i, image, time.time(), t)])
    assert recorder.context.metrics.count("errors", stage="rec", stream="cam") == 1
    assert len(decode(tmp_path / "cam-0.mp4")[0]) == 10  # closed cleanly at the error
    recorder.finish()
    assert len(decode(tmp_path / "cam-1.mp4")[0]) == 9


@pytest.mark.parametrize("template", ["../outside/{stream}.mp4", "/tmp/{stream}.mp4",
                                      "rec/../../{stream}.mp4"])
def test_path_escaping_output_dir_is_rejected(tmp_path, template):
    with pytest.raises(ValueError, match="escapes the output directory"):
        make_recorder(tmp_path, path=template)


@pytest.mark.parametrize("template, message", [
    ("rec/{stream}/{camera}.mp4", r"unknown field\(s\) \['camera'\]"),
    ("rec/{stream}.avi", "must end in .mp4"),
    ("rec/{date}/{stream}.mp4", "only {stream} may appear in folder names"),
    ("rec/{segment:q}.mp4", "only plain fields such as {stream} are allowed"),
    ("rec/{stream:>300000000}.mp4", "only plain fields such as {stream} are allowed"),
])
def test_bad_path_template_is_rejected(tmp_path, template, message):
    with pytest.raises(ValueError, match=message):
        make_recorder(tmp_path, path=template)


def test_stream_id_cannot_escape_output_dir(tmp_path):
    with pytest.raises(ValueError, match="for stream '..' escapes"):
        PathTemplate("{stream}/x.mp4", tmp_path).resolve("..", time.time(), 0)


def test_template_without_stream_is_rejected_for_several_streams(tmp_path):
    with pytest.raises(ValueError, match="no {stream} field but 2 streams"):
        make_recorder(tmp_path, streams=("a", "b"), path="rec/{date}_{time}.mp4")


def test_draw_frame_returns_annotated_copy(source_frames):
    image = source_frames[0][0]
    original = image.copy()
    frame = person_frame("cam", 0, image, 0.0)
    frame.events = [Event("fall_confirmed", "cam", 3, 0.0, 0.0)]

    drawn = draw_frame(frame, {"fps": 10.0})

    np.testing.assert_array_equal(image, original)
    assert drawn is not image and drawn.shape == image.shape
    x1, y1, x2, y2 = frame.persons.boxes[0].astype(int)
    assert np.any(drawn[y1 + 20:y2 - 20, x1] != image[y1 + 20:y2 - 20, x1])  # the box's left edge
    assert np.any(drawn[:8, :100] != image[:8, :100])                          # the event banner
    untouched = np.s_[100:140, 5:60]  # left of the box, below the banner, above the overlay
    np.testing.assert_array_equal(drawn[untouched], image[untouched])


def test_event_banner_stays_up_for_a_few_seconds(tmp_path, source_frames):
    from streampose.frame import Event
    from streampose.sinks.recorder import BANNER_S

    recorder = make_recorder(tmp_path)
    for index, (image, media_time) in enumerate(source_frames):
        frame = Frame("cam", index, image, time.time(), media_time)
        if index == 5:
            frame.events.append(Event("fall_confirmed", "cam", 3, media_time, frame.capture_time))
        recorder.run([frame])
    recorder.finish()
    images, times, _ = decode(recordings(tmp_path)[0])

    def banner_drawn(i):  # the banner's top-left corner against the raw frame
        corner = (slice(0, 12), slice(0, 60))
        return np.abs(images[i][corner].astype(int) - source_frames[i][0][corner]).mean() > 40

    event_time = times[5]
    shown = [banner_drawn(i) for i in range(len(images))]
    assert shown == [0 <= t - event_time <= BANNER_S + 1e-6 for t in times]


def test_a_full_disk_pauses_the_recording_and_it_resumes_when_space_returns(tmp_path, source_frames, caplog):
    """On a real 2 MiB tmpfs: the file being written when the disk fills keeps its fragments, later
    frames are skipped with one log line, and recording resumes in a new file after space is freed."""
    with small_disk(tmp_path / "disk") as disk:
        recorder = make_recorder(disk, path="{stream}-{segment}.mp4", flush_s=0.5, draw=False)
        fill(disk, leave=40_000)  # a few fragments of 320x240 video fit (~8-15 KB each)
        index = 0

        def feed(count: int) -> None:
            nonlocal index
            for _ in range(count):
                image, _ = source_frames[index % FRAME_COUNT]
                recorder.run([Frame("cam", index, image, time.time(), index * 0.1)])
                index += 1

        with caplog.at_level(logging.DEBUG, logger="streampose.stage.rec"):
            deadline = time.monotonic() + 30
            while recorder.pause.reason("cam") is None:
                assert time.monotonic() < deadline, "the disk never filled"
                feed(1)
            full_at = index
            assert "No space left on device" in recorder.pause.reason("cam")
            gauges = {(f.name, s.labels["stream"]): s.value for f in recorder.context.metrics.collect()
                      for s in f.samples if f.name == "streampose_sink_paused"}
            assert gauges == {("streampose_sink_paused", "cam"): 1.0}
            feed(200)  # skipped while paused, one error line in all
            assert caplog.text.count("paused, retrying") == 1
            assert not list(disk.glob("cam-1.mp4"))

            # The abandoned file plays up to its last fragment on disk.
            first = disk / "cam-0.mp4"
            images, times, _ = decode(first)
            assert 5 <= len(images) <= full_at
            assert np.all(np.diff(times) > 0)

            (disk / "filler.bin").unlink()
            deadline = time.monotonic() + 30  # the first retry is due RETRY_FIRST_S after the failure
            while recorder.pause.reason("cam") is not None:
                assert time.monotonic() < deadline, "recording did not resume"
                feed(1)
            assert "writing resumed after" in caplog.text
        recorder.finish()
        resumed = sorted(disk.glob("cam-*.mp4"))[-1]
        assert resumed != first and len(decode(resumed)[0]) >= 5


def moof_count(path: Path) -> int:
    """Complete fragments (moof + mdat) in a fragmented MP4 file, read from its box headers."""
    data = path.read_bytes()
    offset, complete = 0, 0
    while offset + 8 <= len(data):
        size, kind = int.from_bytes(data[offset:offset + 4], "big"), data[offset + 4:offset + 8]
        if size < 8 or offset + size > len(data):
            break
        complete += kind == b"mdat" and offset > 0
        offset += size
    return complete


def decodable_frames(path: Path) -> int:
    """Frames PyAV decodes from `path`, stopping at the first undecodable packet (a torn last fragment)."""
    frames = 0
    with av.open(str(path)) as container:
        try:
            for packet in container.demux(video=0):
                frames += len(packet.decode())
        except av.error.InvalidDataError:
            pass
    return frames


def start_daemon(tmp_path: Path, flush_s: float, metrics_bind: str | None = None) -> tuple[subprocess.Popen, Path]:
    """A real daemon (run_pipeline.py) recording VIDEO, looping in real time, to out/rec/ and writing
    its pose messages to out/cam.jsonl; returns (process, out)."""
    graph = tmp_path / "graph.yml"
    graph.write_text(yaml.safe_dump({
        "sources": [{"id": "cam", "uri": str(VIDEO), "options": {"realtime": True, "loop": True}}],
        "stages": [{"id": "rec", "type": "recorder", "inputs": ["cam"], "path": "rec/{stream}_{segment}.mp4",
                    "flush_s": flush_s, "draw": False},
                   {"id": "log", "type": "jsonl", "inputs": ["cam"], "path": "{stream}.jsonl"}],
        "runtime": {"metrics": {"bind": metrics_bind}},
    }))
    out = tmp_path / "out"
    repo = Path(__file__).resolve().parent.parent
    daemon = subprocess.Popen([sys.executable, str(repo / "run_pipeline.py"), str(graph), "-o", str(out)],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return daemon, out


def wait_for(condition, daemon: subprocess.Popen, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert daemon.poll() is None, f"the daemon exited with {daemon.returncode}: {daemon.stdout.read().decode()}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.05)  # polling interval of the condition


def jsonl_lines(out: Path) -> int:
    path = out / "cam.jsonl"
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def test_a_killed_daemon_leaves_every_recording_playable_up_to_one_flush_interval(tmp_path):
    """A real daemon records a looping 10 fps video in real time; SIGKILL; every file decodes, and
    all but the frames of the last flush interval (plus the encoder's lookahead) are in them."""
    flush_s, fps = 1.0, 10
    daemon, out = start_daemon(tmp_path, flush_s)
    try:
        wait_for(lambda: any(moof_count(p) >= 4 for p in (out / "rec").glob("*.mp4")), daemon,
                 "a recording with 4 fragments")
        os.kill(daemon.pid, signal.SIGKILL)
        assert daemon.wait(10) == -signal.SIGKILL
    finally:
        if daemon.poll() is None:
            daemon.kill()
        daemon.stdout.close()

    processed = jsonl_lines(out)
    files = sorted((out / "rec").glob("*.mp4"))
    decoded = [decodable_frames(p) for p in files]
    assert all(decoded), dict(zip(files, decoded))
    lost = processed - sum(decoded)  # measured: 12 frames
    encoder_lookahead = 11  # x264 veryfast, measured
    in_flight = 2  # runtime.in_flight: frames the JSONL sink may be ahead of the recorder
    assert 0 <= lost <= flush_s * fps + encoder_lookahead + in_flight, (processed, decoded)


def test_a_daemon_whose_recording_disk_is_full_keeps_running_and_resumes_recording(tmp_path):
    """The recorder's folder is a full 2 MiB tmpfs: the daemon keeps processing (its JSONL, on another
    file system, grows), records nothing, and records again once space is freed; SIGTERM exits 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def health() -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                return reply.status, json.load(reply)
        except urllib.error.HTTPError as reply:
            return reply.code, json.load(reply)

    with small_disk(tmp_path / "out" / "rec") as disk:
        filler = fill(disk)
        daemon, out = start_daemon(tmp_path, flush_s=0.5, metrics_bind=f"127.0.0.1:{port}")
        try:
            wait_for(lambda: jsonl_lines(out) >= 30, daemon, "30 frames processed")
            seen = jsonl_lines(out)
            wait_for(lambda: jsonl_lines(out) >= seen + 30, daemon, "30 more frames processed on a full disk")
            assert not any(moof_count(p) for p in disk.glob("*.mp4"))
            code, report = health()
            assert code == 503 and report["state"] == "degraded", report
            assert "No space left on device" in report["streams"]["cam"]["paused"]["rec"], report
            filler.unlink()
            wait_for(lambda: any(moof_count(p) >= 2 for p in disk.glob("*.mp4")), daemon,
                     "recording resumed after space was freed")
            assert "paused" not in health()[1]["streams"]["cam"]
            daemon.send_signal(signal.SIGTERM)
            output = daemon.communicate(timeout=30)[0].decode()
            assert daemon.returncode == 0, output
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    assert output.count("paused, retrying") == 1, output
    assert "writing resumed after" in output
