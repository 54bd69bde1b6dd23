"""The threaded runtime on real video: ordering, batching, failures, flow control,
ZeroMQ output, RTSP outages, metrics and health, SIGTERM."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import jsonschema
import numpy as np
from conftest import REPO, VIDEOS, use_stage
from rtsp_server import free_port
from test_publisher import wait_subscribed

from streampose import messages
from streampose.client import PoseMessage, StatusMessage, Subscriber
from streampose.graph.loader import load_graph
from streampose.runtime import health
from streampose.runtime.pipeline import Pipeline
from streampose.runtime.stage import Stage
from streampose.stages.noop import NoopStage

CHAIR = VIDEOS / "fall_room_chair_320x240.mp4"   # 193 frames, 10 fps
JACKS = VIDEOS / "jumping_jacks_Ibbu_1.mp4"       # 273 frames, 30 fps


def frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def write_graph(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "graph.yml"
    path.write_text(textwrap.dedent(text))
    return path


def run_to_end(graph_path: Path, timeout_s: float = 60) -> Pipeline:
    pipeline = Pipeline(load_graph(graph_path), output_dir=graph_path.parent / "out")
    pipeline.start()
    assert pipeline.wait(timeout_s), "graph did not finish"
    return pipeline


def jsonl_frames(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_streams_process_every_frame_in_order(tmp_path):
    graph = write_graph(tmp_path, f"""
        sources:
          - {{id: chair, uri: {CHAIR}}}
          - {{id: jacks, uri: {JACKS}}}
        stages:
          - {{id: batched, type: noop, batch: {{max_size: 6, timeout_ms: 5, per_stream: 2}}}}
          - {{id: slow, type: noop, delay_ms: 1}}
          - {{id: log, type: jsonl, path: "{{stream}}.jsonl"}}
        runtime: {{metrics: {{bind: null}}, in_flight: 4}}
    """)
    pipeline = run_to_end(graph)
    for stream, video in (("chair", CHAIR), ("jacks", JACKS)):
        lines = jsonl_frames(tmp_path / "out" / f"{stream}.jsonl")
        assert [m["frame"] for m in lines] == list(range(frame_count(video)))
        media = [m["media_time"] for m in lines]
        assert media == sorted(media)
        assert pipeline.metrics.count("drops", stream=stream) == 0
    assert pipeline.metrics.quantiles("stage_latency", stage="slow")[0] >= 0.001


class FlakyStage(NoopStage):
    """Fails on every 10th frame of stream `chair`, as a model might on a bad input."""

    def process(self, frames):
        if any(f.stream == "chair" and f.index % 10 == 3 for f in frames):
            raise ValueError("bad frame")


def test_stage_failure_is_counted_and_stream_goes_on(tmp_path, monkeypatch):
    use_stage(monkeypatch, "noop", FlakyStage)
    graph = write_graph(tmp_path, f"""
        sources:
          - {{id: chair, uri: {CHAIR}}}
          - {{id: jacks, uri: {JACKS}}}
        stages:
          - {{id: flaky, type: noop, batch: {{max_size: 4}}}}
          - {{id: log, type: jsonl, path: "{{stream}}.jsonl"}}
        runtime: {{metrics: {{bind: null}}}}
    """)
    pipeline = run_to_end(graph)
    chair = jsonl_frames(tmp_path / "out" / "chair.jsonl")
    failed = [m["frame"] for m in chair if m["failed_stages"] == ["flaky"]]
    assert len(chair) == 193
    assert failed == [i for i in range(193) if i % 10 == 3]
    assert pipeline.metrics.count("errors", stage="flaky", stream="chair") == len(failed)
    # Frames of the other stream that shared a batch with a bad frame were retried alone.
    assert pipeline.metrics.count("errors", stream="jacks") == 0
    assert all(not m["failed_stages"] for m in jsonl_frames(tmp_path / "out" / "jacks.jsonl"))


def test_repeated_failures_mark_stream_degraded(tmp_path, monkeypatch):
    class AlwaysFails(NoopStage):
        def process(self, frames):
            raise RuntimeError("model crashed")

    use_stage(monkeypatch, "noop", AlwaysFails)
    graph = write_graph(tmp_path, f"""
        sources: [{{id: chair, uri: {CHAIR}, options: {{realtime: true}}}}]
        stages: [{{id: broken, type: noop}}]
        runtime: {{metrics: {{bind: null}}, degraded_after: 3}}
    """)
    pipeline = Pipeline(load_graph(graph), output_dir=tmp_path / "out")
    pipeline.start()
    deadline = time.monotonic() + 10
    while pipeline.streams["chair"].state != "degraded" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pipeline.streams["chair"].state == "degraded"
    assert health.report(pipeline)[1]["state"] == "degraded"
    assert pipeline.shutdown()


def test_failing_first_stage_degrades_stream_although_later_stage_succeeds(tmp_path, monkeypatch):
    class AlwaysFails(NoopStage):
        def process(self, frames):
            raise RuntimeError("detector crashed")

    use_stage(monkeypatch, "noop", AlwaysFails)
    graph = write_graph(tmp_path, f"""
        sources: [{{id: chair, uri: {CHAIR}, options: {{realtime: true}}}}]
        stages:
          - {{id: broken, type: noop}}
          - {{id: log, type: jsonl, path: "{{stream}}.jsonl"}}
        runtime: {{metrics: {{bind: null}}, degraded_after: 3}}
    """)
    pipeline = Pipeline(load_graph(graph), output_dir=tmp_path / "out")
    pipeline.start()
    deadline = time.monotonic() + 10
    while pipeline.metrics.count("frames", stage="log", stream="chair") < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pipeline.metrics.count("errors", stage="log", stream="chair") == 0
    assert pipeline.streams["chair"].state == "degraded"
    assert health.report(pipeline)[1]["state"] == "degraded"
    assert pipeline.shutdown()


def test_latest_frame_policy_admits_only_fresh_frames_and_counts_drops(tmp_path):
    graph = write_graph(tmp_path, f"""
        sources: [{{id: live, uri: {JACKS}, options: {{realtime: true}}}}]
        stages:
          - {{id: slow, type: noop, delay_ms: 100}}
          - {{id: log, type: jsonl, path: "{{stream}}.jsonl"}}
        runtime: {{metrics: {{bind: null}}, in_flight: 1, even_drops: false}}
    """)
    pipeline = Pipeline(load_graph(graph), output_dir=tmp_path / "out")
    pipeline.start()
    deadline = time.monotonic() + 60
    while pipeline.metrics.count("frames", stage="log") < 20:      # poll the work done, however loaded the machine
        assert time.monotonic() < deadline, "20 frames were not processed in 60 s"
        time.sleep(0.05)
    assert pipeline.shutdown()
    processed = pipeline.metrics.count("frames", stage="slow")
    drops = pipeline.metrics.count("drops", stream="live")
    # 30 fps in, at most 10 fps of work: about two frames in three are dropped at the door,
    # and a frame gets in only once the one before has left (in_flight 1), so no frame waits
    # behind a backlog: each processed frame was captured after the previous one's 100 ms of work.
    assert drops >= 1.5 * processed
    captured = [m["capture_time"] for m in jsonl_frames(tmp_path / "out" / "live.jsonl")]
    assert len(captured) >= 20 and min(np.diff(captured)) >= 0.1


def test_zmq_messages_match_frames_processed(tmp_path):
    port = free_port()
    graph = write_graph(tmp_path, f"""
        sources: [{{id: chair, uri: {CHAIR}}}]
        stages:
          - {{id: work, type: noop}}
          - {{id: publish, type: publisher, bind: "tcp://127.0.0.1:{port}"}}
        runtime: {{metrics: {{bind: null}}}}
    """)
    pipeline = Pipeline(load_graph(graph), output_dir=tmp_path / "out")
    schema = messages.message_schema()
    received = []
    with Subscriber(f"tcp://127.0.0.1:{port}", topics=("pose/", "status/"), timeout_s=3.0) as subscriber:
        wait_subscribed(pipeline.runners["publish"].stage, subscriber)   # ZeroMQ's slow joiner, probed
        pipeline.start()
        while True:
            item = subscriber.recv_dict()
            if item is None:
                break
            topic, message = item
            jsonschema.validate(message, schema)
            received.append((topic, message))
            if message["type"] == "status" and message["kind"] == "ended":
                break
    assert pipeline.wait(10)
    poses = [m for t, m in received if t == "pose/chair"]
    statuses = [m["kind"] for t, m in received if t == "status/chair"]
    assert len(poses) == pipeline.metrics.count("frames", stage="publish") == 193
    assert [m["frame"] for m in poses] == list(range(193))
    assert statuses == ["opened", "ended"]


def test_rtsp_outage_reconnects_while_file_stream_flows(tmp_path, rtsp_server):
    port = free_port()
    graph = write_graph(tmp_path, f"""
        sources:
          - id: cam
            uri: {rtsp_server.url}
            options: {{read_timeout_s: 2, reconnect: {{initial_s: 0.2, max_s: 1}}}}
          - {{id: file, uri: {JACKS}, options: {{realtime: true, loop: true}}}}
        stages:
          - {{id: work, type: noop}}
          - {{id: publish, type: publisher, bind: "tcp://127.0.0.1:{port}"}}
        runtime: {{metrics: {{bind: null}}}}
    """)
    pipeline = Pipeline(load_graph(graph), output_dir=tmp_path / "out")
    log: list[tuple[float, object]] = []
    stop = threading.Event()

    def listen():
        with Subscriber(f"tcp://127.0.0.1:{port}", topics=("pose/", "status/"), timeout_s=0.5) as sub:
            while not stop.is_set():
                message = sub.recv()
                if message is not None:
                    log.append((time.monotonic(), message))

    listener = threading.Thread(target=listen)
    listener.start()
    pipeline.start()  # what the listener misses while it joins, wait_for waits past

    def wait_for(predicate, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(predicate(m) for _, m in list(log)):
                return True
            time.sleep(0.05)
        return False

    def cam_frames(segment):
        return [m for _, m in list(log) if isinstance(m, PoseMessage) and m.stream == "cam" and m.segment == segment]

    try:
        assert wait_for(lambda m: isinstance(m, PoseMessage) and m.stream == "cam", 20), "no RTSP frames"
        rtsp_server.stop()
        killed = time.monotonic()
        assert wait_for(lambda m: isinstance(m, StatusMessage) and m.kind == "lost", 10)
        # The file stream keeps flowing through the outage.
        deadline = time.monotonic() + 20
        while len([t for t, m in list(log) if isinstance(m, PoseMessage) and m.stream == "file"
                   and t > killed + 0.5]) < 20:
            assert time.monotonic() < deadline, "the file stream stalled while the camera was down"
            time.sleep(0.05)
        assert health.report(pipeline)[1]["streams"]["cam"]["state"] == "reconnecting"
        rtsp_server.start()
        assert wait_for(lambda m: isinstance(m, StatusMessage) and m.kind == "opened" and m.segment == 1, 20)
        assert wait_for(lambda m: isinstance(m, PoseMessage) and m.stream == "cam" and m.segment == 1, 20)
        assert pipeline.metrics.count("reconnects", stream="cam") >= 1
        assert health.report(pipeline)[1]["streams"]["cam"]["state"] == "running"
        assert len(cam_frames(0)) > 0 and len(cam_frames(1)) > 0
    finally:
        assert pipeline.shutdown()
        stop.set()
        listener.join()


def test_sigterm_drains_finalises_recording_and_serves_metrics(tmp_path):
    metrics_port = free_port()
    graph = write_graph(tmp_path, f"""
        sources: [{{id: cam, uri: {JACKS}, options: {{realtime: true, loop: true}}}}]
        stages:
          - {{id: work, type: noop}}
          - {{id: record, type: recorder, path: "rec/{{stream}}.mp4"}}
        runtime: {{metrics: {{bind: "127.0.0.1:{metrics_port}", log_interval_s: 1}}, output_dir: {tmp_path / "out"}}}
    """)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, str(REPO / "run_pipeline.py"), str(graph)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{metrics_port}"
        deadline = time.monotonic() + 20
        doc = None
        while time.monotonic() < deadline:
            try:
                doc = json.load(urllib.request.urlopen(base + "/health", timeout=1))
                if doc["state"] == "running" and doc["streams"]["cam"]["frames"] > 30:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert doc and doc["state"] == "running", doc
        assert doc["streams"]["cam"]["state"] == "running"
        text = urllib.request.urlopen(base + "/metrics", timeout=1).read().decode()
        assert 'streampose_frames_total{stage="record",stream="cam"}' in text
        assert 'streampose_e2e_latency_seconds_count{stream="cam"}' in text
        assert 'streampose_queue_depth{stage="work"}' in text
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    text = output.decode()
    assert process.returncode == 0, text
    assert "cam: ended" in text or "cam: running" in text
    # The periodic one-line summary (log_interval_s: 1) ran while the graph did.
    assert re.search(r"cam \[running\] \d+\.\d fps, drops \d+ e2e p50 \d+ ms p95 \d+ ms \| work ", text), text
    with av.open(str(tmp_path / "out" / "rec" / "cam.mp4")) as container:
        stream = container.streams.video[0]
        decoded = sum(1 for _ in container.decode(video=0))
        assert (stream.width, stream.height) == (352, 640)
    assert decoded >= 30


def readiness(metrics_port: int) -> str | None:
    """The daemon's /readyz state ("ready", "starting", "stopping"), None while it does not answer."""
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1).read()
        return "ready"
    except urllib.error.HTTPError as error:
        return json.load(error)["state"]
    except OSError:
        return None


def test_a_run_with_a_failed_stream_exits_1_and_names_it(tmp_path):
    """A file that cannot be opened fails its stream; the other plays to its end, and the exit
    status (1) and one last line tell a script or a service manager which stream failed."""
    graph = write_graph(tmp_path, f"""
        sources: [{{id: good, uri: {CHAIR}}}, {{id: missing, uri: missing.mp4}}]
        stages: [{{id: work, type: noop}}]
        runtime: {{metrics: {{bind: null}}, output_dir: {tmp_path / "out"}}}
    """)
    result = subprocess.run([sys.executable, str(REPO / "run_pipeline.py"), str(graph)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "good: ended, 193 frames decoded, 193 processed" in result.stdout
    assert result.stderr.splitlines()[-1] == (
        f"{graph}: 1 of 2 streams failed (missing): the reason is logged above as 'stream ... failed'; "
        "fix the source's uri")
    assert "stream missing failed: cannot open: " in result.stderr


def test_second_signal_exits_at_once(tmp_path):
    metrics_port = free_port()
    graph = write_graph(tmp_path, f"""
        sources: [{{id: cam, uri: {JACKS}, options: {{realtime: true, loop: true}}}}]
        stages: [{{id: stuck, type: noop, delay_ms: 20000}}]
        runtime: {{metrics: {{bind: "127.0.0.1:{metrics_port}"}}, drain_timeout_s: 60}}
    """)
    process = subprocess.Popen([sys.executable, str(REPO / "run_pipeline.py"), str(graph)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)

    def in_flight():
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).read().decode()
        except OSError:
            return False
        return 'streampose_frames_captured_total{stream="cam"} 0.0' not in text and "frames_captured" in text

    try:
        # Until a frame is inside the 20 s batch, however long a loaded machine takes to get there.
        deadline = time.monotonic() + 30
        while not in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while readiness(metrics_port) != "stopping" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert readiness(metrics_port) == "stopping"
        assert process.poll() is None, "the first signal must drain, not exit"
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 1
    assert time.monotonic() - start < 3
    assert b"second SIGTERM: exiting now" in output


def test_metrics_count_by_label():
    from streampose.runtime.metrics import Metrics
    metrics = Metrics()
    metrics.inc("events", kind="rep", stream="a")
    metrics.inc("events", 2, kind="rep", stream="a")
    metrics.inc("events", kind="fall_confirmed", stream="a")
    metrics.inc("events", kind="rep", stream="b")
    assert metrics.count_by("events", "kind", stream="a") == {"rep": 3, "fall_confirmed": 1}
    assert metrics.count_by("events", "stream") == {"a": 4, "b": 1}
    assert metrics.count_by("events", "kind", stream="c") == {}


class ThreadNoting(Stage):
    """Notes the thread it runs in, per stage id; fails on every 10th frame of stream `chair`."""

    threads: dict[str, set[str]] = {}

    def process(self, frames):
        ThreadNoting.threads.setdefault(self.id, set()).add(threading.current_thread().name)
        if any(f.stream == "chair" and f.index % 10 == 3 for f in frames):
            raise ValueError("bad frame")


def test_light_stages_run_in_the_thread_of_the_stage_feeding_them(tmp_path, monkeypatch):
    # The tracker is a light stage (schema.LightStage): fed by one stage, one frame at a time,
    # it runs in that stage's thread (a chain of them in the first one's), unless own_thread.
    # Fed by the sources it has a thread of its own.
    use_stage(monkeypatch, "tracker", ThreadNoting)
    monkeypatch.setattr(ThreadNoting, "threads", {})
    graph = write_graph(tmp_path, f"""
        sources:
          - {{id: chair, uri: {CHAIR}}}
          - {{id: jacks, uri: {JACKS}}}
        stages:
          - {{id: first, type: tracker}}
          - {{id: batched, type: noop, batch: {{max_size: 4}}}}
          - {{id: hosted, type: tracker}}
          - {{id: hosted_too, type: tracker}}
          - {{id: own, type: tracker, own_thread: true}}
          - {{id: log, type: jsonl, path: "{{stream}}.jsonl"}}
        runtime: {{metrics: {{bind: null}}, in_flight: 4}}
    """)
    pipeline = run_to_end(graph)
    assert ThreadNoting.threads == {"first": {"stage-first"}, "hosted": {"stage-batched"},
                                    "hosted_too": {"stage-batched"}, "own": {"stage-own"}}
    assert set(pipeline.inboxes) == {"first", "batched", "own", "log"}
    assert pipeline.describe_threads() == "first; batched + hosted, hosted_too; own; log"
    for stream, video in (("chair", CHAIR), ("jacks", JACKS)):
        lines = jsonl_frames(tmp_path / "out" / f"{stream}.jsonl")
        assert [m["frame"] for m in lines] == list(range(frame_count(video)))
        assert pipeline.metrics.count("frames", stage="hosted", stream=stream) == len(lines)
    # A hosted stage's failures are its own: counted, the frame goes on, the others are untouched.
    chair = jsonl_frames(tmp_path / "out" / "chair.jsonl")
    failed = {m["frame"] for m in chair if m["failed_stages"]}
    assert failed == {i for i in range(193) if i % 10 == 3}
    assert {tuple(m["failed_stages"]) for m in chair if m["failed_stages"]} == {("first", "hosted", "hosted_too",
                                                                                  "own")}
    assert pipeline.metrics.count("errors", stage="hosted", stream="chair") == len(failed)
    assert health.liveness(pipeline) == (True, {"state": "alive", "problems": []})


def test_a_slow_sink_gets_every_frame_of_a_file(tmp_path):
    # A file is read as fast as the graph goes: its frames wait for room in a sink's queue
    # (2 frames here) instead of being skipped, so a recording of a file has every frame.
    graph = write_graph(tmp_path, f"""
        sources: [{{id: file, uri: {CHAIR}}}]
        stages:
          - {{id: work, type: noop}}
          - {{id: slow, type: noop_sink, delay_ms: 5}}
        runtime: {{metrics: {{bind: null}}, queue_size: 2}}
    """)
    pipeline = run_to_end(graph)
    count = pipeline.metrics.count
    assert count("frames", stage="slow") == count("frames", stage="work") == frame_count(CHAIR)
    assert count("sink_drops", stage="slow") == 0


def test_a_slow_sink_skips_live_frames_without_slowing_the_pose_path(tmp_path):
    # The sink takes 200 ms a frame, a live 30 fps stream brings one every 33 ms. Its frames'
    # slots are freed when the processor chain is done, so the chain keeps up with the stream
    # while the slow sink skips what its own queue cannot hold, and a fast sink beside it
    # writes every frame. (Were slots held until every sink finished, about one frame in
    # three would get in: 2 in flight per 200 ms.)
    graph = write_graph(tmp_path, f"""
        sources: [{{id: live, uri: {JACKS}, options: {{realtime: true}}}}]
        stages:
          - {{id: work, type: noop, delay_ms: 2}}
          - {{id: slow, type: noop_sink, inputs: [work], delay_ms: 200}}
          - {{id: log, type: jsonl, inputs: [work], path: "{{stream}}.jsonl"}}
        runtime: {{metrics: {{bind: null}}, in_flight: 2, queue_size: 4, even_drops: false}}
    """)
    pipeline = Pipeline(load_graph(graph), output_dir=tmp_path / "out")
    pipeline.start()
    deadline = time.monotonic() + 60
    while pipeline.metrics.count("frames", stage="work") < 90:      # 3 s of the stream
        assert time.monotonic() < deadline, "90 frames were not processed in 60 s"
        time.sleep(0.05)
    report = health.report(pipeline)[1]["streams"]["live"]
    assert pipeline.shutdown()
    count = pipeline.metrics.count
    processed, captured = count("frames", stage="work"), count("frames_captured", stream="live")
    assert processed >= 0.8 * captured, (processed, captured)
    skipped = count("sink_drops", stage="slow", stream="live")
    assert skipped > 0 and report["sink_drops"]["slow"] > 0
    assert count("frames", stage="slow") + skipped == processed
    assert count("sink_drops", stage="log") == 0
    assert len(jsonl_frames(tmp_path / "out" / "live.jsonl")) == processed
