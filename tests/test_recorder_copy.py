"""encode: copy: the recorder writes the sources' own packets; every test reads the files back with
PyAV and compares them with the source, packet by packet and decoded frame by frame."""

from __future__ import annotations

import json
import logging
import textwrap
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from streampose.frame import Frame
from streampose.graph import schema
from streampose.graph.loader import GraphError, load_graph
from streampose.graph.check import check_graph
from streampose.runtime.pipeline import Pipeline
from streampose.runtime.stage import StageContext
from streampose.sinks.recorder import RecorderStage
from streampose.sources.capture import Capture
from conftest import IMAGES, VIDEOS

CHAIR = VIDEOS / "fall_room_chair_320x240.mp4"  # H.264 with B-frames, 10 fps, a keyframe every 3 s
AVI = VIDEOS / "fall_le2i_coffeeroom_trip_backward_320x240.avi"  # MPEG-4 part 2 (FMP4), 25 fps
SHORT = VIDEOS / "fall_urfd_fall_from_chair_cam0_320x240.mp4"  # H.264, 30 fps, 3 s


def source_packets(video: Path) -> list[bytes]:
    with av.open(str(video)) as container:
        return [bytes(p) for p in container.demux(video=0) if p.size]


def file_packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as container:
        return [p for p in container.demux(video=0) if p.size]


def decoded(path: Path) -> tuple[list[np.ndarray], list[float]]:
    """Every frame of `path` (BGR) and its presentation time; a decoding error raises."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.to_ndarray(format="bgr24") for f in frames], [float(f.time) for f in frames]


def copy_recorder(output_dir: Path, **params) -> RecorderStage:
    context = StageContext(graph_dir=output_dir, output_dir=output_dir, streams=["cam"])
    return RecorderStage("rec", schema.Recorder(id="rec", type="recorder", encode="copy", **params), context)


def source_frames(video: Path) -> list[Frame]:
    """The frames a graph's source would send, each carrying its packets."""
    capture = Capture(schema.Source(id="cam", uri=str(video)), Path("."), lambda name: None,
                      on_packets_shed=lambda n: None)
    return [item for item in capture.frames(threading.Event()) if isinstance(item, Frame)]


def write_graph(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "graph.yml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("video", [CHAIR, AVI], ids=["h264", "mpeg4-avi"])
def test_a_copy_has_the_source_packets_and_decodes_to_the_same_frames(tmp_path, video):
    recorder = copy_recorder(tmp_path, path="{stream}.mp4")
    for frame in source_frames(video):
        recorder.run([frame])
    recorder.finish()

    copy = tmp_path / "cam.mp4"
    assert [bytes(p) for p in file_packets(copy)] == source_packets(video)
    images, times = decoded(copy)
    source_images, source_times = decoded(video)
    assert len(images) == len(source_images)
    assert all(np.array_equal(a, b) for a, b in zip(images, source_images))
    np.testing.assert_allclose(np.array(times) - times[0], np.array(source_times) - source_times[0], atol=1e-6)


def test_segments_start_at_keyframes_and_fragments_follow_them(tmp_path):
    recorder = copy_recorder(tmp_path, path="{stream}-{segment}.mp4", segment_s=5.0)
    for frame in source_frames(CHAIR):
        recorder.run([frame])
    recorder.finish()

    files = [tmp_path / f"cam-{i}.mp4" for i in range(4)]
    assert sorted(tmp_path.glob("*.mp4")) == files
    packets = [file_packets(path) for path in files]
    # Keyframes every 3 s: the first keyframe at least 5 s into a file ends it, so 6 s per file.
    assert [len(p) for p in packets] == [60, 60, 60, 13]
    assert all(p[0].is_keyframe for p in packets)
    assert [bytes(p) for p in sum(packets, [])] == source_packets(CHAIR)
    for path, file in zip(files, packets):
        moofs = path.read_bytes().count(b"moof")
        assert moofs == sum(p.is_keyframe for p in file)  # a fragment per keyframe
        images, times = decoded(path)
        assert len(images) == len(file) and times[0] == 0.1  # from 0 in decoding order, B-frame delay 0.1 s


def test_a_frame_the_recorder_queue_dropped_resumes_at_the_next_keyframe(tmp_path):
    frames = source_frames(CHAIR)
    dropped = frames[40]  # as SinkInbox drops a live frame the recorder's queue has no room for
    recorder = copy_recorder(tmp_path, path="{stream}.mp4")
    for frame in frames:
        if frame is not dropped:
            recorder.run([frame])
    recorder.finish()

    source = source_packets(CHAIR)
    with av.open(str(CHAIR)) as container:
        keyframes = [i for i, p in enumerate(p for p in container.demux(video=0) if p.size) if p.is_keyframe]
    resume = min(k for k in keyframes if k >= dropped.packets.end)
    assert resume == 60
    written = [bytes(p) for p in file_packets(tmp_path / "cam.mp4")]
    assert written == source[:dropped.packets.first] + source[resume:]
    images, times = decoded(tmp_path / "cam.mp4")  # no GOP with a hole: every packet decodes
    assert len(images) == len(written) and np.all(np.diff(times) > 0)
    assert times[dropped.packets.first] - times[dropped.packets.first - 1] > 1.5  # the gap plays as a gap


def test_frames_dropped_at_the_entrance_leave_no_hole_in_the_recording(tmp_path):
    graph = write_graph(tmp_path, f"""
        sources: [{{id: cam, uri: {SHORT}, options: {{realtime: true}}}}]
        stages:
          - {{id: slow, type: noop, delay_ms: 100}}
          - {{id: rec, type: recorder, inputs: [slow], encode: copy, path: "{{stream}}.mp4"}}
          - {{id: log, type: jsonl, inputs: [slow], path: "{{stream}}.jsonl"}}
        runtime: {{metrics: {{bind: null}}, in_flight: 1, even_drops: false}}
    """)
    pipeline = Pipeline(load_graph(graph), output_dir=tmp_path / "out")
    pipeline.start()
    assert pipeline.wait(60)

    processed = pipeline.metrics.count("frames", stage="rec", stream="cam")
    assert pipeline.metrics.count("drops", stream="cam") >= processed  # 30 fps in, at most 10 fps of work
    last_index = max(json.loads(line)["frame"] for line in (tmp_path / "out" / "cam.jsonl").read_text().splitlines())
    written = [bytes(p) for p in file_packets(tmp_path / "out" / "cam.mp4")]
    # Every packet up to the last frame that entered (the decoder may have read a few beyond it).
    assert len(written) > last_index and written == source_packets(SHORT)[:len(written)]
    images, _ = decoded(tmp_path / "out" / "cam.mp4")
    assert len(images) == len(written)


def test_a_stream_whose_frames_are_all_dropped_sheds_whole_gops_and_counts_them(tmp_path):
    video = VIDEOS / "reps_situps_side_gym_mat.mp4"  # 855 packets, keyframes at 0, 101, 229, 357, ...
    shed = []
    capture = Capture(schema.Source(id="cam", uri=str(video)), Path("."), lambda name: None,
                      on_packets_shed=shed.append)
    decoded_frames = 0

    def admit() -> bool:  # the first 500 frames are dropped at the entrance, as a busy graph would
        nonlocal decoded_frames
        decoded_frames += 1
        return decoded_frames > 500

    recorder = copy_recorder(tmp_path, path="{stream}.mp4")
    frames = [item for item in capture.frames(threading.Event(), admit=admit) if isinstance(item, Frame)]
    for frame in frames:
        recorder.run([frame])
    recorder.finish()

    # Past CARRY_PACKETS (300) held, the oldest GOP goes: packets 0-100, then 101-228.
    assert shed == [101, 128]
    assert frames[0].packets.first == 229 and frames[0].packets.packets[0].is_keyframe
    assert [bytes(p) for p in file_packets(tmp_path / "cam.mp4")] == source_packets(video)[229:]
    images, _ = decoded(tmp_path / "cam.mp4")
    assert len(images) == 855 - 229


def test_an_rtsp_camera_records_its_own_stream(tmp_path, rtsp_server):
    graph = write_graph(tmp_path, f"""
        sources: [{{id: cam, uri: "{rtsp_server.url}"}}]
        stages:
          - {{id: work, type: noop}}
          - {{id: rec, type: recorder, encode: copy, path: "{{stream}}.mp4"}}
        runtime: {{metrics: {{bind: null}}}}
    """)
    pipeline = Pipeline(load_graph(graph), output_dir=tmp_path / "out")
    pipeline.start()
    deadline = time.monotonic() + 60
    while pipeline.metrics.count("frames", stage="rec") < 70:  # the first GOP and 4 s beyond, at 10 fps
        assert time.monotonic() < deadline, "70 frames were not recorded in 60 s"
        time.sleep(0.05)  # polling interval
    assert pipeline.shutdown()

    images, times = decoded(tmp_path / "out" / "cam.mp4")
    assert len(images) >= 35 and np.all(np.diff(times) > 0)
    # The server loops the file from its first keyframe; the recording starts at a keyframe of it
    # (the first packet of an RTSP session has no timestamp, so the next keyframe starts the file).
    source_images, _ = decoded(CHAIR)
    start = next(i for i, image in enumerate(source_images) if np.array_equal(image, images[0]))
    assert start % 30 == 0
    looped = source_images * 2
    assert all(np.array_equal(a, b) for a, b in zip(images, looped[start:]))


def test_a_codec_mp4_cannot_hold_is_refused_with_one_line(tmp_path, caplog):
    raw = tmp_path / "raw.nut"
    with av.open(str(raw), "w") as container:  # uncompressed video, which MP4 cannot hold
        stream = container.add_stream("rawvideo", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "bgr24"
        for image, _ in zip(decoded(CHAIR)[0], range(12)):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
    recorder = copy_recorder(tmp_path, path="{stream}.mp4")
    with caplog.at_level(logging.INFO, logger="streampose.stage.rec"):
        for frame in source_frames(raw):
            recorder.run([frame])
    recorder.finish()

    assert not list(tmp_path.glob("*.mp4"))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["stream cam: not recorded: encode: copy cannot put its rawvideo 320x240 video in an MP4 "
                      "file ('mp4' format does not support 'rawvideo' codec); set encode: x264 on recorder 'rec' "
                      "to encode the frames instead, or have the camera send H.264 or H.265"]
    assert recorder.context.metrics.count("errors", stage="rec", stream="cam") == 1


def test_an_image_sequence_cannot_be_copied(tmp_path):
    graph = write_graph(tmp_path, f"""
        sources: [{{id: stills, uri: "{IMAGES}/*.jpg"}}]
        stages: [{{id: rec, type: recorder, encode: copy}}]
        runtime: {{metrics: {{bind: null}}}}
    """)
    with pytest.raises(GraphError) as refused:  # as `validate` and `run` check a graph before they start
        check_graph(load_graph(graph), model_paths=[], output_dir=tmp_path / "out")
    assert str(refused.value) == (f"{graph}:3:44: stage 'rec': key 'encode': copy writes the source's compressed "
                                  f"video, and source 'stills' is an image sequence, which has none; give 'stills' "
                                  f"a recorder with encode: x264 (it encodes the frames)")


def test_x264_settings_with_copy_are_a_graph_error(tmp_path):
    graph = write_graph(tmp_path, f"""
        sources: [{{id: cam, uri: {CHAIR}}}]
        stages: [{{id: rec, type: recorder, encode: copy, crf: 20, draw: true}}]
    """)
    with pytest.raises(GraphError) as refused:
        load_graph(graph)
    assert str(refused.value).endswith("stage 'rec': crf, draw apply only to encode: x264 (copy writes the camera's "
                                       "packets unchanged, undrawn); remove them or set encode: x264")
