"""Publisher, JSONL sink and subscriber over real ZeroMQ sockets and real files."""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time

import cv2
import jsonschema
import msgpack
import numpy as np
import pydantic
import pytest
import zmq

from conftest import IMAGES
from streampose import messages
from streampose.client import (EventMessage, PoseMessage, StatusMessage, Subscriber, add_subscribe_parser,
                               parse_message)
from streampose.frame import NUM_KEYPOINTS, Event, Frame, Persons, StreamEvent
from streampose.graph import schema
from streampose.runtime.stage import StageContext
from streampose.sinks.jsonl import JsonlStage
from streampose.sinks.publisher import PublisherStage, make_curve_keys

VALIDATOR = jsonschema.Draft202012Validator(messages.message_schema())
PROBE = "probe"  # stream of the status messages used to wait for a subscription


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    path = IMAGES / "four_people_walking_gy_demo_7.jpg"
    image = cv2.imread(str(path))
    assert image is not None, f"cannot read {path}"
    return image


def make_frames(image: np.ndarray, streams=("cam1", "cam2"), per_stream=6, seed=0) -> list[Frame]:
    """Frames alternating between streams. Frame 0 of each stream has nobody, frame 1
    boxes only; later ones keypoints, every third 3D joints too, every fourth an event."""
    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    frames = []
    for index in range(per_stream):
        for stream in streams:
            n = 0 if index == 0 else int(rng.integers(1, 5))
            corners = np.sort(rng.uniform(0, [width, height], size=(n, 2, 2)), axis=1)
            persons = Persons.from_boxes(corners.reshape(n, 4), rng.uniform(0.3, 1.0, n))
            persons.track_ids = np.arange(n, dtype=np.int64) + 10 * index
            if index >= 2:
                persons.keypoints = np.concatenate(
                    [rng.uniform(0, [width, height], (n, NUM_KEYPOINTS, 2)), rng.uniform(0, 1, (n, NUM_KEYPOINTS, 1))],
                    axis=2).astype(np.float32)
                persons.pose_scores = persons.keypoints[..., 2].mean(axis=1)
                persons.annotations = [{"fall_score": np.float32(rng.uniform())} for _ in range(n)]
            if index >= 2 and index % 3 == 0:
                persons.kpts3d = rng.uniform(-2, 5, (n, NUM_KEYPOINTS, 4)).astype(np.float32)
            capture_time = time.time()
            frame = Frame(stream, index, image, capture_time, media_time=index / 25, persons=persons,
                          timings={"detector": 0.0123456789, "keypoints": 0.004})
            if index % 4 == 3:
                frame.events.append(Event("fall_confirmed", stream, int(persons.track_ids[0]), frame.media_time,
                                          capture_time, score=0.87, data={"frames": index}))
            frames.append(frame)
    return frames


@pytest.fixture
def make_publisher(tmp_path):
    stages = []

    def make(**params) -> PublisherStage:
        params = {"id": "pub", "type": "publisher", "bind": "tcp://127.0.0.1:*", **params}
        stage = PublisherStage("pub", schema.Publisher(**params), StageContext(tmp_path, tmp_path / "out"))
        stages.append(stage)
        return stage

    yield make
    for stage in stages:
        stage.close()


def wait_subscribed(stage: PublisherStage, sub: Subscriber, timeout_s: float = 5.0) -> None:
    """Beat ZeroMQ's slow joiner: publish probe status messages until `sub` gets one,
    then drain the probes still in flight."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stage.stream_event(StreamEvent(PROBE, "opened", 0, wall_time=time.time()))
        if sub.recv(0.05) is not None:
            while sub.recv(0.2) is not None:
                pass
            return
    raise AssertionError(f"the subscription of {sub.address} never reached the publisher")


def receive_all(sub: Subscriber, quiet_s: float = 0.5) -> list[tuple[str, dict]]:
    """Every message until none comes for `quiet_s`, each checked against the schema."""
    received = []
    while (got := sub.recv_dict(quiet_s)) is not None:
        VALIDATOR.validate(got[1])
        received.append(got)
    return received


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_pose_event_and_status_messages_arrive_complete_and_valid(make_publisher, image, fmt):
    frames = make_frames(image)
    stage = make_publisher(format=fmt)
    with Subscriber(stage.endpoint, topics=("pose/", "event/", "status/")) as sub:
        wait_subscribed(stage, sub)
        stage.stream_event(StreamEvent("cam1", "opened", 0, wall_time=time.time()))
        for start in range(0, len(frames), 3):  # batches, as the runtime hands them
            stage.run(frames[start:start + 3])
        stage.stream_event(StreamEvent("cam1", "lost", 1, "read timeout after 5.0 s", time.time()))
        received = receive_all(sub)

    topics = [topic for topic, _ in received]
    assert topics.count("pose/cam1") == topics.count("pose/cam2") == len(frames) // 2
    assert topics.count("event/cam1") + topics.count("event/cam2") == sum(len(f.events) for f in frames)
    assert [t for t in topics if t.startswith("status/")] == ["status/cam1", "status/cam1"]
    for topic, msg in received:
        assert topic == f"{msg['type']}/{msg['stream']}"

    parsed = [parse_message(msg) for _, msg in received]
    poses = [m for m in parsed if isinstance(m, PoseMessage)]
    assert [(m.stream, m.frame) for m in poses] == [(f.stream, f.index) for f in frames]
    for msg, frame in zip(poses, frames):
        persons = frame.persons
        assert (msg.width, msg.height) == (image.shape[1], image.shape[0])
        assert msg.boxes.shape == (len(persons), 4) and msg.boxes.dtype == np.float32
        np.testing.assert_allclose(msg.boxes, persons.boxes, atol=0.006)
        np.testing.assert_allclose(msg.scores, persons.scores, atol=0.0006)
        np.testing.assert_array_equal(msg.track_ids, persons.track_ids)
        if persons.keypoints is None or len(persons) == 0:
            assert msg.keypoints is None
        else:
            assert msg.keypoints.shape == (len(persons), NUM_KEYPOINTS, 3)
            np.testing.assert_allclose(msg.keypoints[..., :2], persons.keypoints[..., :2], atol=0.006)
            np.testing.assert_allclose(msg.keypoints[..., 2], persons.keypoints[..., 2], atol=0.0006)
            np.testing.assert_allclose(msg.pose_scores, persons.pose_scores, atol=0.0006)
            assert [a["fall_score"] for a in msg.annotations] == pytest.approx(
                [a["fall_score"] for a in persons.annotations], abs=1e-6)
        if persons.kpts3d is None or len(persons) == 0:
            assert msg.kpts3d is None
        else:
            np.testing.assert_allclose(msg.kpts3d, persons.kpts3d, atol=0.0006)
        assert msg.timings == {"detector": 0.012346, "keypoints": 0.004}
        assert 0 <= msg.latency < 5
        assert msg.capture_time == pytest.approx(frame.capture_time, abs=1e-6)

    events = [m for m in parsed if isinstance(m, EventMessage)]
    assert [(e.stream, e.frame, e.kind, e.data) for e in events] == [
        (f.stream, f.index, "fall_confirmed", {"frames": f.index}) for f in frames if f.events]
    statuses = [m for m in parsed if isinstance(m, StatusMessage)]
    assert [(s.kind, s.segment, s.detail) for s in statuses] == [("opened", 0, ""),
                                                                  ("lost", 1, "read timeout after 5.0 s")]


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_wire_format_is_topic_then_payload_for_any_zeromq_client(make_publisher, image, fmt):
    stage = make_publisher(format=fmt)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"pose/")
    sub.connect(stage.endpoint)
    try:
        frame = make_frames(image, streams=("cam1",), per_stream=3)[2]
        deadline = time.monotonic() + 5
        while not sub.poll(50):  # slow joiner: publish until the subscription is in place
            assert time.monotonic() < deadline, "no message reached a plain SUB socket"
            stage.run([frame])
        topic, payload = sub.recv_multipart()
    finally:
        sub.close()
    assert topic == b"pose/cam1"
    msg = json.loads(payload) if fmt == "json" else msgpack.unpackb(payload)
    VALIDATOR.validate(msg)
    assert msg["frame"] == 2 and len(msg["persons"]) == len(frame.persons)


def test_topic_prefix_selects_one_stream(make_publisher, image):
    frames = make_frames(image)
    stage = make_publisher()
    with Subscriber(stage.endpoint, topics=("pose/cam2", f"status/{PROBE}")) as sub:
        wait_subscribed(stage, sub)
        stage.run(frames)
        stage.stream_event(StreamEvent("cam2", "ended", 0, wall_time=time.time()))
        received = receive_all(sub)
    assert [msg["frame"] for topic, msg in received] == [f.index for f in frames if f.stream == "cam2"]
    assert {topic for topic, _ in received} == {"pose/cam2"}


def test_curve_only_subscribers_with_the_server_key_receive(make_publisher, image, tmp_path):
    public_file, secret_file = make_curve_keys(tmp_path / "keys")
    assert (secret_file.stat().st_mode & 0o777) == 0o600
    with pytest.raises(FileExistsError, match="publisher.key"):
        make_curve_keys(tmp_path / "keys")
    other_public, _ = make_curve_keys(tmp_path / "other")

    stage = make_publisher(curve_secret_key="keys/publisher.key_secret")  # relative to the graph folder
    frames = make_frames(image, streams=("cam1",), per_stream=8)
    with Subscriber(stage.endpoint, topics=("pose/", "status/"), server_public_key=public_file) as good, \
            Subscriber(stage.endpoint, topics=("pose/", "status/"), server_public_key=other_public) as wrong_key, \
            Subscriber(stage.endpoint, topics=("pose/", "status/")) as plain:
        wait_subscribed(stage, good)
        stage.run(frames)
        assert len(receive_all(good)) == len(frames)
        assert wrong_key.recv(0.3) is None
        assert plain.recv(0.3) is None

    # The key itself (Z85 text) works as well as the key file.
    z85_key = zmq.auth.load_certificate(public_file)[0].decode()
    with Subscriber(stage.endpoint, topics=("status/",), server_public_key=z85_key) as by_text:
        wait_subscribed(stage, by_text)


def test_binding_beyond_loopback_without_curve_warns(make_publisher, tmp_path, caplog):
    make_curve_keys(tmp_path / "keys")
    with caplog.at_level(logging.WARNING, logger="streampose"):
        make_publisher(bind="tcp://127.0.0.1:*")
        make_publisher(bind="tcp://0.0.0.0:*", curve_secret_key="keys/publisher.key_secret")
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        make_publisher(bind="tcp://0.0.0.0:*")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "tcp://0.0.0.0:* without CURVE" in warnings[0]


def test_bad_publisher_settings_fail_clearly(make_publisher, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.key_secret"):
        make_publisher(curve_secret_key="missing.key_secret")
    public_file, _ = make_curve_keys(tmp_path / "keys")
    with pytest.raises(ValueError, match="only a public key"):
        make_publisher(curve_secret_key=str(public_file))
    taken = make_publisher().endpoint
    with pytest.raises(RuntimeError, match=f"cannot bind '{taken}'"):
        make_publisher(bind=taken)
    with pytest.raises(pydantic.ValidationError, match="bind"):
        schema.Publisher(id="pub", type="publisher", bind="udp://127.0.0.1:5555")


def test_ipc_endpoint(make_publisher, image, tmp_path):
    stage = make_publisher(bind=f"ipc://{tmp_path}/pub.sock")
    frames = make_frames(image, streams=("cam1",), per_stream=4)
    with Subscriber(stage.endpoint, topics=("pose/", "status/")) as sub:
        wait_subscribed(stage, sub)
        stage.run(frames)
        assert [msg["frame"] for _, msg in receive_all(sub)] == [0, 1, 2, 3]


def test_latest_only_keeps_the_newest_message_of_each_topic(make_publisher, image):
    stage = make_publisher()
    frames = make_frames(image, per_stream=40)
    with (Subscriber(stage.endpoint, topics=(f"status/{PROBE}",)) as witness,
          Subscriber(stage.endpoint, topics=("pose/", f"status/{PROBE}"), conflate=True) as sub):
        wait_subscribed(stage, witness)
        wait_subscribed(stage, sub)
        while witness.recv(0.2) is not None:  # the probes that waited for sub
            pass
        stage.run(frames)
        # All the frames are queued on sub before it reads: the witness, on the same publisher
        # and I/O thread, gets a marker sent after them.
        stage.stream_event(StreamEvent(PROBE, "ended", 1, wall_time=time.time()))
        assert witness.recv(5) is not None, "the marker never arrived"
        received = receive_all(sub, quiet_s=0.3)
    assert {topic: msg.get("frame") for topic, msg in received} == {"pose/cam1": 39, "pose/cam2": 39,
                                                                     f"status/{PROBE}": None}
    assert len(received) <= 6, f"latest-only handed out {len(received)} of {len(frames)} messages"


def test_subscriber_iteration_ends_at_timeout():
    start = time.monotonic()
    with Subscriber("tcp://127.0.0.1:1", timeout_s=0.2) as sub:
        assert list(sub) == []
    assert time.monotonic() - start < 2
    with pytest.raises(ValueError, match="address 'bogus://x': unknown scheme 'bogus://' "
                       r"\(did you mean 'tcp://x'\?\)"):
        Subscriber("bogus://x")
    with pytest.raises(ValueError, match=r"address '127.0.0.1:5555' has no scheme \(did you mean 'tcp://127"):
        Subscriber("127.0.0.1:5555")
    with pytest.raises(ValueError, match="cannot connect to 'tcp://127.0.0.1'"):
        Subscriber("tcp://127.0.0.1")
    with pytest.raises(ValueError, match="neither a key file"):
        Subscriber("tcp://127.0.0.1:1", server_public_key="no-such-file")


def test_jsonl_lines_are_flushed_per_frame_and_valid(image, tmp_path):
    out = tmp_path / "out"
    params = schema.Jsonl(id="jsonl", type="jsonl", path="poses/{stream}.jsonl")
    frames = make_frames(image)
    stage = JsonlStage("jsonl", params, StageContext(tmp_path, out, streams=["cam1", "cam2"]))
    stage.run(frames[:4])
    stage.run(frames[4:])
    for stream in ("cam1", "cam2"):  # read before close: a killed process would leave this
        lines = (out / f"poses/{stream}.jsonl").read_text().splitlines()
        assert [json.loads(line)["frame"] for line in lines] == [f.index for f in frames if f.stream == stream]
        for line in lines:
            VALIDATOR.validate(json.loads(line))
    stage.close()

    # A run killed mid-line leaves a torn line; the next run starts on a fresh line.
    path = out / "poses/cam1.jsonl"
    with open(path, "ab") as file:
        file.write(b'{"v":1,"type":"po')
    stage = JsonlStage("jsonl", params, StageContext(tmp_path, out, streams=["cam1"]))
    stage.run(frames[:1])
    stage.close()
    lines = path.read_text().splitlines()
    assert lines[-2] == '{"v":1,"type":"po'
    VALIDATOR.validate(json.loads(lines[-1]))


@pytest.mark.parametrize(("template", "streams", "error"), [
    ("../escape/{stream}.jsonl", ["cam1"], "outside the output directory"),
    ("/tmp/{stream}.jsonl", ["cam1"], "outside the output directory"),
    ("{stream}/../../x.jsonl", ["cam1"], "outside the output directory"),
    ("{stream}/x.jsonl", [".."], "outside the output directory"),
    ("jsonl/{camera}.jsonl", ["cam1"], r"unknown field\(s\) \['camera'\]"),
])
def test_jsonl_path_must_stay_in_the_output_directory(tmp_path, template, streams, error):
    params = schema.Jsonl(id="jsonl", type="jsonl", path=template)
    with pytest.raises(ValueError, match=error):
        JsonlStage("jsonl", params, StageContext(tmp_path, tmp_path / "out", streams=streams))


def test_schema_rejects_malformed_messages(image):
    frame = make_frames(image, streams=("cam1",), per_stream=3)[2]
    good = messages.decode(messages.encode(messages.pose_message(frame)))
    VALIDATOR.validate(good)
    broken = [
        {**good, "v": 2},
        {k: v for k, v in good.items() if k != "latency"},
        {**good, "persons": [{**good["persons"][0], "keypoints": good["persons"][0]["keypoints"][:16]}]},
        {**good, "persons": [{**good["persons"][0], "box": [1, 2, 3]}]},
        {**good, "extra": 1},
        {**messages.status_message(StreamEvent("cam1", "exploded", 0)), "wall_time": 1.0},
    ]
    for msg in broken:
        assert not VALIDATOR.is_valid(msg), msg


def test_encode_decode_errors_are_clear():
    status = messages.status_message(StreamEvent("cam1", "ended", 2, "end of file", 1.5))
    for fmt in messages.FORMATS:
        assert messages.decode(messages.encode(status, fmt)) == status
    with pytest.raises(ValueError, match="unknown message format 'xml'"):
        messages.encode(status, "xml")
    with pytest.raises(ValueError, match="neither msgpack nor JSON"):
        messages.decode(b'{"v": 1,')
    with pytest.raises(ValueError, match="not a message map"):
        messages.decode(msgpack.packb([1, 2]))
    with pytest.raises(ValueError, match="Out of range float"):
        messages.encode({**status, "detail": float("nan")}, "json")
    with pytest.raises(TypeError, match="cannot encode object"):
        messages.encode({**status, "detail": object()})


@pytest.mark.parametrize("as_json", [False, True])
def test_subscribe_command_prints_count_messages(make_publisher, image, capsys, as_json):
    stage = make_publisher()
    frames = make_frames(image, streams=("cam1", "cam2"), per_stream=3)
    stop = threading.Event()

    def publish():  # keeps publishing until the command has its messages (slow joiner)
        while not stop.wait(0.02):
            stage.run(frames)

    parser = argparse.ArgumentParser()
    add_subscribe_parser(parser.add_subparsers())
    argv = ["subscribe", stage.endpoint, "--topic", "pose/cam1", "--count", "4", "--timeout", "5"]
    args = parser.parse_args(argv + ["--json"] * as_json)
    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        status = args.func(args)
    finally:
        stop.set()
        publisher.join()
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for line in lines:
        if as_json:
            msg = json.loads(line)
            VALIDATOR.validate(msg)
            assert msg["stream"] == "cam1"
        else:
            assert line.startswith("pose   cam1  frame ") and " persons " in line and line.endswith(" ms")


def test_subscribe_command_times_out_with_status_1(capsys):
    parser = argparse.ArgumentParser()
    add_subscribe_parser(parser.add_subparsers())
    args = parser.parse_args(["subscribe", "tcp://127.0.0.1:1", "--timeout", "0.2"])
    assert args.func(args) == 1
    assert "no message for 0.2 s" in capsys.readouterr().err


@pytest.mark.parametrize("conflate", [False, True])
def test_subscriber_skips_malformed_messages(caplog, conflate):
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.linger = 0
    pub.bind("tcp://127.0.0.1:*")
    status = messages.status_message(StreamEvent("cam1", "ended", 0, "", 1.0))
    try:
        with Subscriber(pub.last_endpoint.decode(), topics=("",), conflate=conflate) as sub:
            deadline = time.monotonic() + 5
            while sub.recv(0.05) is None:  # slow joiner
                assert time.monotonic() < deadline, "subscription never arrived"
                pub.send_multipart([b"status/cam1", messages.encode(status)])
            while sub.recv(0.2) is not None:  # probes still in flight
                pass
            with caplog.at_level(logging.WARNING, logger="streampose.client"):
                pub.send_multipart([b"pose/cam1", b"\xc1 not msgpack"])
                pub.send_multipart([b"event/cam2", b"a", b"b"])
                pub.send_multipart([b"status/cam3", messages.encode({**status, "v": 99})])
                pub.send_multipart([b"status/cam4", messages.encode({**status, "stream": "cam4"})])
                received = sub.recv(2)
                assert sub.recv(0.2) is None
    finally:
        pub.close()
    assert isinstance(received, StatusMessage) and received.stream == "cam4"
    warnings = " | ".join(r.getMessage() for r in caplog.records)
    assert "neither msgpack nor JSON" in warnings and "3 parts" in warnings and "version 99" in warnings
