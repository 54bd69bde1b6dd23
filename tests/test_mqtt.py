"""The mqtt stage against a real mosquitto: a real fall clip through the real graph; the broker
restarted mid-run loses no alarm; Home Assistant discovery; user and password."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import MEDIA, MODELS, VIDEOS
from mosquitto import Mosquitto, Subscriber, wait_for

from streampose.graph.loader import GraphError, load_graph
from streampose.runtime.pipeline import Pipeline

FALL_CLIP = "fall_faint_studio_1280x720.mp4"
PROCESSING = [
    {"id": "detect", "type": "detector", "model": "picodet_s_320_lcnet_pedestrian_ov", "threads": 2},
    {"id": "pose", "type": "keypoints", "model": "tinypose_128x96_ov", "threads": 2},
    {"id": "track", "type": "tracker", "algorithm": "ocsort", "low_match_iou": 0.3},
    {"id": "smooth", "type": "smoother"},
    {"id": "falls", "type": "plugin", "plugin": "fall"},
]


def labelled_frames(clip: str) -> int:
    return yaml.safe_load((MEDIA / "labels.yml").read_text())[clip]["frame_count"]


def write_graph(folder: Path, sinks: list[dict], clips=(FALL_CLIP,), stages=PROCESSING) -> Path:
    path = folder / "graph.yml"
    path.write_text(yaml.safe_dump({
        "sources": [{"id": Path(clip).stem.split("_")[0] + str(i), "uri": str(VIDEOS / clip)}
                    for i, clip in enumerate(clips)],
        "stages": list(stages) + sinks,
        "runtime": {"metrics": {"bind": None}},
    }))
    return path


def mqtt_stage(port: int, **params) -> dict:
    return {"id": "mqtt", "type": "mqtt", "port": port, "node": "test", "keepalive_s": 5, "close_timeout_s": 20,
            **params}


def test_a_fall_alarm_raised_while_the_broker_restarts_reaches_the_subscriber(tmp_path):
    with Mosquitto(tmp_path / "broker") as broker:
        subscriber = Subscriber(broker.port)
        try:
            wait_for(subscriber.subscribed.is_set, 10, "the subscription")
            graph = load_graph(write_graph(tmp_path, [mqtt_stage(broker.port)]))
            pipeline = Pipeline(graph, model_paths=[MODELS], output_dir=tmp_path / "out")
            stage = pipeline.runners["mqtt"].stage
            stream = graph.spec.sources[0].id
            wait_for(lambda: "online" in subscriber.on("/daemon/test/availability"), 10, "availability online")
            discovery = wait_for(lambda: subscriber.on(f"/streampose_{stream}/fall/config"), 10, "discovery")

            broker.stop()  # the broker goes away mid-run, before the video is processed
            wait_for(lambda: not stage._connected.is_set(), 10, "the stage to notice the broker is gone")
            pipeline.start()
            frames = labelled_frames(FALL_CLIP)
            wait_for(lambda: pipeline.metrics.count("frames", stage="mqtt") >= frames, 120,
                     "every frame of the clip through the graph")
            raised = pipeline.metrics.count_by("events", "kind")
            assert raised.get("fall_confirmed", 0) >= 1, f"the labelled fall raised no alarm: {raised}"
            buffered = pipeline.metrics.count("mqtt_published", kind="event")
            assert buffered == sum(raised.values())  # every event kind is published by default
            assert stage.client._out_messages, "nothing was buffered while the broker was down"

            broker.start()  # same port; the stage reconnects by itself and sends what it buffered
            assert pipeline.shutdown()
            events = wait_for(lambda: len(subscriber.events()) >= buffered and subscriber.events(), 30,
                              "every buffered event at the subscriber")
        finally:
            subscriber.close()
    kinds = [event["kind"] for event in events]
    assert len(events) == buffered and sorted(kinds) == sorted(k for k, n in raised.items() for _ in range(n))
    assert all(event["stream"] == stream and event["type"] == "event" for event in events)
    assert pipeline.metrics.count("mqtt_dropped") == 0
    # Home Assistant: the fall sensor went ON with the alarm; the daemon said offline when it stopped.
    assert "ON" in subscriber.on(f"{stream}/fall")
    assert subscriber.on("/daemon/test/availability")[-1] == "offline"
    config = json.loads(discovery[-1])
    assert config["state_topic"] == f"streampose/{stream}/fall" and config["device_class"] == "safety"
    assert config["availability_topic"] == "streampose/daemon/test/availability"
    assert config["unique_id"] == f"streampose_{stream}_fall"
    statuses = [json.loads(s)["kind"] for s in subscriber.on(f"{stream}/status")]
    assert statuses[0] == "opened" and statuses[-1] == "ended"
    # Delivery time of the alarm, capture to the broker's PUBACK, includes the outage here.
    assert pipeline.metrics.quantiles("mqtt_latency", stage="mqtt") is not None


def test_discovery_makes_a_fall_sensor_and_a_rep_counter_per_camera_and_poses_are_rate_limited(tmp_path):
    with Mosquitto(tmp_path / "broker", users={"cam": "s3cret-pass"}) as broker:
        subscriber = Subscriber(broker.port, username="cam", password="s3cret-pass")
        try:
            wait_for(subscriber.subscribed.is_set, 10, "the subscription")
            clips = ("squat_side_view.mp4", FALL_CLIP)
            stages = PROCESSING + [{"id": "reps", "type": "plugin", "plugin": "reps"}]
            graph = load_graph(write_graph(tmp_path, [mqtt_stage(broker.port, username="cam", password="s3cret-pass",
                                                                 pose_rate_hz=2.0)], clips, stages))
            pipeline = Pipeline(graph, model_paths=[MODELS], output_dir=tmp_path / "out")
            pipeline.start()
            assert pipeline.wait(300) and pipeline.shutdown()
            squat, fall = (source.id for source in graph.spec.sources)
            wait_for(lambda: subscriber.on(f"{squat}/status") and json.loads(subscriber.on(f"{squat}/status")[-1])
                     ["kind"] == "ended", 10, "the squat stream's end")
        finally:
            subscriber.close()
    for stream in (squat, fall):
        sensor = json.loads(subscriber.on(f"homeassistant/sensor/streampose_{stream}/reps/config")[-1])
        assert sensor["state_topic"] == f"streampose/{stream}/reps" and sensor["state_class"] == "total_increasing"
        assert sensor["device"]["identifiers"] == [f"streampose_{stream}"]
        binary = json.loads(subscriber.on(f"homeassistant/binary_sensor/streampose_{stream}/fall/config")[-1])
        assert binary["device"] == sensor["device"]
    counts = [int(c) for c in subscriber.on(f"{squat}/reps")]
    reps = pipeline.metrics.count("events", kind="rep", stream=squat)
    assert reps >= 1 and max(counts) == reps
    # 2 Hz of media time: the squat clip's duration x 2 (+1 for the first frame), not one per frame.
    poses = [json.loads(p) for p in subscriber.on(f"{squat}/pose")]
    duration = yaml.safe_load((MEDIA / "labels.yml").read_text())["squat_side_view.mp4"]["duration_s"]
    assert len(poses) <= duration * 2 + 1 and len(poses) >= duration * 2 - 2
    assert all(p["persons"] is not None for p in poses)


def test_a_wrong_password_is_logged_and_nothing_is_published(tmp_path, caplog):
    with Mosquitto(tmp_path / "broker", users={"cam": "s3cret-pass"}) as broker:
        graph = load_graph(write_graph(tmp_path, [mqtt_stage(broker.port, username="cam", password="wrong")]))
        pipeline = Pipeline(graph, model_paths=[MODELS], output_dir=tmp_path / "out")
        stage = pipeline.runners["mqtt"].stage
        wait_for(lambda: "refused the connection" in caplog.text, 10, "the refusal in the log")
        assert not stage._connected.is_set()
        stage.client.disconnect()
        stage.client.loop_stop()


def test_bad_mqtt_parameters_are_refused_with_the_key(tmp_path):
    for bad, key in (({"port": 0}, "port"), ({"topic_prefix": "a/#"}, "topic_prefix"), ({"qos": 2}, "qos")):
        path = write_graph(tmp_path, [{"id": "mqtt", "type": "mqtt", **bad}], stages=PROCESSING[:1])
        with pytest.raises(GraphError, match=key):
            load_graph(path)


def test_a_killed_daemon_is_reported_offline_by_its_last_will(tmp_path):
    import signal
    import subprocess
    import sys

    from conftest import REPO
    with Mosquitto(tmp_path / "broker") as broker:
        subscriber = Subscriber(broker.port, topics=("streampose/daemon/#",))
        try:
            wait_for(subscriber.subscribed.is_set, 10, "the subscription")
            path = tmp_path / "graph.yml"
            path.write_text(yaml.safe_dump({
                "sources": [{"id": "cam", "uri": str(VIDEOS / FALL_CLIP), "options": {"realtime": True, "loop": True}}],
                "stages": [{"id": "mqtt", "type": "mqtt", "port": broker.port, "node": "doomed", "keepalive_s": 5}],
                "runtime": {"metrics": {"bind": None}}}))
            daemon = subprocess.Popen([sys.executable, "-m", "streampose", "run", str(path)], cwd=REPO,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_for(lambda: subscriber.on("doomed/availability") == ["online"], 30, "the daemon online")
                daemon.send_signal(signal.SIGKILL)  # no goodbye: only the broker's last will can tell
                daemon.wait(10)
                # The broker gives up on a silent client after 1.5 keepalives (7.5 s).
                wait_for(lambda: subscriber.on("doomed/availability")[-1:] == ["offline"], 15, "the last will")
            finally:
                if daemon.poll() is None:
                    daemon.kill()
        finally:
            subscriber.close()


def test_tls_to_the_broker_and_a_certificate_from_another_ca_is_refused(tmp_path, caplog):
    from mosquitto import make_certificates

    with Mosquitto(tmp_path / "broker", tls=True) as broker:
        subscriber = Subscriber(broker.port, topics=("streampose/#",))  # on the plain listener
        try:
            wait_for(subscriber.subscribed.is_set, 10, "the subscription")
            stranger = tmp_path / "stranger"
            stranger.mkdir()
            make_certificates(stranger)
            for ca, node in ((broker.ca_file, "tls"), (stranger / "ca.pem", "stranger")):
                path = tmp_path / f"{node}.yml"
                path.write_text(yaml.safe_dump({
                    "sources": [{"id": node, "uri": str(VIDEOS / FALL_CLIP)}],
                    "stages": [mqtt_stage(broker.tls_port, node=node, tls={"ca_file": str(ca)}, close_timeout_s=5)],
                    "runtime": {"metrics": {"bind": None}}}))
                pipeline = Pipeline(load_graph(path), output_dir=tmp_path / "out")
                pipeline.start()
                assert pipeline.wait(60) and pipeline.shutdown()
            statuses = wait_for(lambda: [json.loads(s)["kind"] for s in subscriber.on("tls/status")] == ["opened", "ended"]
                                and subscriber.on("tls/status"), 10, "the stream's status over TLS")
            assert statuses and subscriber.on("daemon/tls/availability")[-1] == "offline"
            assert not subscriber.on("stranger/status")  # its messages never reached the broker
            assert "cannot connect to 127.0.0.1" in caplog.text and "check tls.ca_file" in caplog.text
        finally:
            subscriber.close()
