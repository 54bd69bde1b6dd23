"""/livez, /readyz, /health and /metrics over real HTTP, on real graphs: while models load,
through a camera outage, under overload, with a stuck or dead stage, and the metrics' format."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import MODELS, REPO, VIDEOS, use_stage
from prometheus_client.parser import text_string_to_metric_families
from rtsp_server import free_port

from streampose.graph.loader import load_graph
from streampose.runtime.metrics import COUNTERS, GAUGES, HISTOGRAMS, LATENCY_BUCKETS
from streampose.runtime.monitor import MonitorServer
from streampose.runtime.pipeline import Pipeline
from streampose.stages.noop import NoopStage

CHAIR = VIDEOS / "fall_room_chair_320x240.mp4"   # 193 frames, 10 fps
JACKS = VIDEOS / "jumping_jacks_Ibbu_1.mp4"       # 273 frames, 30 fps


def write_graph(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "graph.yml"
    path.write_text(textwrap.dedent(text))
    return path


def get(base: str, path: str) -> tuple[int, str]:
    """(status, body) of a GET; 503 is an answer, not an error."""
    try:
        with urllib.request.urlopen(base + path, timeout=2) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def probe(base: str, path: str) -> tuple[int, dict]:
    code, body = get(base, path)
    return code, json.loads(body)


def poll(read, done, timeout_s: float):
    """Calls `read()` until `done(value)` or the deadline; returns the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


class Served:
    """A pipeline built from `graph` behind a real MonitorServer on a free port."""

    def __init__(self, graph: Path):
        self.monitor = MonitorServer(f"127.0.0.1:{free_port()}")
        self.monitor.start()
        self.base = f"http://{self.monitor.address}"
        self.pipeline = Pipeline(load_graph(graph), output_dir=graph.parent / "out")
        self.monitor.attach(self.pipeline)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pipeline.shutdown()
        self.monitor.close()


def stream_state(base: str, stream: str) -> str:
    return probe(base, "/health")[1]["streams"][stream]["state"]


# --------------------------------------------------------------------------- probes


def test_endpoints_answer_starting_while_models_load(tmp_path):
    port = free_port()
    graph = write_graph(tmp_path, f"""
        sources: [{{id: cam, uri: {CHAIR}, options: {{realtime: true, loop: true}}}}]
        stages:
          - {{id: detect, type: detector, model: picodet_s_320_lcnet_pedestrian_ov}}
          - {{id: pose, type: keypoints, model: tinypose_256x192_ov}}
        runtime: {{metrics: {{bind: "127.0.0.1:{port}", log_interval_s: 0}}, output_dir: {tmp_path / "out"}}}
    """)
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, str(REPO / "run_pipeline.py"), str(graph)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        def answer():
            try:
                return probe(base, "/readyz"), probe(base, "/livez"), probe(base, "/health")
            except OSError:  # not listening yet: the interpreter is still importing
                return None

        seen = poll(answer, lambda a: a is not None, 30)
        assert seen is not None, "the monitor never answered"
        (ready_code, ready), (live_code, live), (health_code, health) = seen
        # The graph is still being built when the first answer comes: models load behind it.
        assert (ready_code, ready["state"]) == (503, "starting"), ready
        assert "loading models" in ready["detail"]
        assert (live_code, live) == (200, {"state": "alive", "problems": []})
        assert (health_code, health["state"]) == (200, "starting")
        ready_code, ready = poll(lambda: probe(base, "/readyz"), lambda r: r[0] == 200, 60)
        assert (ready_code, ready) == (200, {"state": "ready"})
        assert stream_state(base, "cam") in ("running", "overloaded")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output.decode()


def test_taken_metrics_port_is_one_line_and_exit_2_before_models_load(tmp_path):
    # A model folder whose network is garbage: `run`'s checks read only its infer_cfg.yml, so
    # had the stages been built before the port was bound, loading it would be the error.
    broken = tmp_path / "models" / "broken_detector"
    broken.mkdir(parents=True)
    shutil.copy(MODELS / "picodet_s_192_lcnet_pedestrian_ov" / "infer_cfg.yml", broken)
    (broken / "model.xml").write_text("not a network")
    (broken / "model.bin").write_bytes(b"\0" * 16)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        graph = write_graph(tmp_path, f"""
            sources: [{{id: cam, uri: {CHAIR}}}]
            stages: [{{id: detect, type: detector, model: broken_detector}}]
            runtime: {{metrics: {{bind: "127.0.0.1:{port}"}}}}
        """)
        result = subprocess.run([sys.executable, str(REPO / "run_pipeline.py"), str(graph),
                                 "--models", str(tmp_path / "models")],
                                capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (f"{graph}: runtime.metrics.bind 127.0.0.1:{port}: address already in use; stop the "
                             f"other daemon or choose another port with --set runtime.metrics.bind=127.0.0.1:"
                             f"{port + 1}\n")


def test_camera_outage_keeps_daemon_alive_and_ready(tmp_path, rtsp_server):
    graph = write_graph(tmp_path, f"""
        sources:
          - id: cam
            uri: {rtsp_server.url}
            options: {{read_timeout_s: 2, reconnect: {{initial_s: 0.2, max_s: 1}}}}
          - {{id: file, uri: {JACKS}, options: {{realtime: true, loop: true}}}}
        stages: [{{id: work, type: noop}}]
        runtime: {{metrics: {{bind: null}}}}
    """)
    with Served(graph) as served:
        base = served.base
        assert probe(base, "/readyz")[0] == 503  # built, not started
        served.pipeline.start()
        assert poll(lambda: probe(base, "/readyz"), lambda r: r[0] == 200, 20) == (200, {"state": "ready"})
        assert poll(lambda: probe(base, "/health"), lambda r: r[1]["state"] == "running", 20)[0] == 200

        rtsp_server.stop()
        assert poll(lambda: stream_state(base, "cam"), lambda s: s == "reconnecting", 15) == "reconnecting"
        code, health = probe(base, "/health")
        assert (code, health["state"]) == (503, "degraded")
        assert health["streams"]["file"]["state"] == "running"
        assert probe(base, "/livez") == (200, {"state": "alive", "problems": []})
        assert probe(base, "/readyz") == (200, {"state": "ready"})

        rtsp_server.start()
        assert poll(lambda: probe(base, "/health"), lambda r: r[1]["state"] == "running", 20)[0] == 200
        assert probe(base, "/health")[1]["streams"]["cam"]["reconnects"] >= 1


def test_broken_file_sources_fail_their_streams_while_the_others_run(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "random.mp4").write_bytes(bytes(range(256)) * 64)
    shutil.copy(CHAIR, tmp_path / "looping.mp4")
    graph = write_graph(tmp_path, f"""
        sources:
          - {{id: missing, uri: missing.mp4}}
          - {{id: empty, uri: empty.mp4}}
          - {{id: random, uri: random.mp4}}
          - {{id: looping, uri: looping.mp4, options: {{loop: true}}}}
          - {{id: good, uri: {CHAIR}}}
        stages: [{{id: work, type: noop}}]
        runtime: {{metrics: {{bind: null}}}}
    """)
    with Served(graph) as served:
        base, metrics = served.base, served.pipeline.metrics
        served.pipeline.start()
        poll(lambda: metrics.count("frames", stage="work", stream="looping"), lambda n: n > 10, 20)
        (tmp_path / "looping.mp4").unlink()  # the pass under way plays on; the next one cannot open
        code, health = poll(lambda: probe(base, "/health"),
                            lambda r: r[1]["streams"]["looping"]["state"] == "failed", 30)
        assert served.pipeline.wait(30)
        assert metrics.count("frames", stage="work", stream="good") == 193  # every frame of the healthy one
        code, health = probe(base, "/health")
        assert code == 503 and health["state"] == "degraded", health
        streams = health["streams"]
        assert {sid: s["state"] for sid, s in streams.items()} == {
            "missing": "failed", "empty": "failed", "random": "failed", "looping": "failed", "good": "ended"}
        assert streams["missing"]["detail"].startswith("cannot open: ") and "missing.mp4" in streams["missing"]["detail"]
        assert streams["looping"]["detail"].startswith("cannot reopen: ")
        assert probe(base, "/livez")[0] == 200


@pytest.mark.parametrize("case", ["drops", "latency"])
def test_live_stream_that_cannot_keep_up_is_overloaded(tmp_path, case):
    # 30 fps in, 100 ms of work per frame (10 fps). in_flight 1: two frames in three are dropped
    # at the door. in_flight 8 with drops allowed: frames wait behind each other, so the
    # end-to-end latency grows to about 8 x 100 ms.
    runtime = {"drops": "in_flight: 1, health: {window_s: 2}",
               "latency": "in_flight: 8, health: {window_s: 2, max_drop_share: 1, max_latency_s: 0.3}"}[case]
    graph = write_graph(tmp_path, f"""
        sources:
          - {{id: live, uri: {JACKS}, options: {{realtime: true, loop: true}}}}
          - {{id: calm, uri: {CHAIR}, options: {{realtime: true, loop: true}}}}
        stages:
          - {{id: slow, type: noop, delay_ms: 100, inputs: [live]}}
          - {{id: quick, type: noop, inputs: [calm]}}
        runtime: {{metrics: {{bind: null}}, {runtime}}}
    """)
    with Served(graph) as served:
        base = served.base
        served.pipeline.start()
        code, health = poll(lambda: probe(base, "/health"),
                            lambda r: r[1]["streams"]["live"]["state"] == "overloaded", 20)
        live = health["streams"]["live"]
        assert live["state"] == "overloaded", health
        assert ("dropped" if case == "drops" else "end-to-end p95") in live["reason"]
        assert (code, health["state"]) == (503, "degraded")
        assert health["streams"]["calm"]["state"] == "running"
        assert probe(base, "/livez")[0] == 200
        assert probe(base, "/readyz")[0] == 200


def test_stuck_stage_fails_liveness(tmp_path):
    graph = write_graph(tmp_path, f"""
        sources: [{{id: cam, uri: {CHAIR}, options: {{realtime: true, loop: true}}}}]
        stages: [{{id: hung, type: noop, delay_ms: 4000}}]
        runtime: {{metrics: {{bind: null}}, drain_timeout_s: 0, health: {{stuck_after_s: 1}}}}
    """)
    with Served(graph) as served:
        base = served.base
        served.pipeline.start()
        code, live = poll(lambda: probe(base, "/livez"), lambda r: r[0] == 503, 10)
        assert code == 503
        assert live["state"] == "dead"
        assert live["problems"][0].startswith("stage hung: busy with one batch for ")
        assert probe(base, "/health")[1]["state"] == "failed"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the crash is the point
def test_dead_stage_thread_fails_liveness(tmp_path, monkeypatch):
    class Crashes(NoopStage):
        def process(self, frames):
            raise SystemExit  # not an Exception: the runner does not catch it, its thread ends

    use_stage(monkeypatch, "noop", Crashes)
    graph = write_graph(tmp_path, f"""
        sources: [{{id: cam, uri: {CHAIR}, options: {{realtime: true, loop: true}}}}]
        stages: [{{id: fragile, type: noop}}]
        runtime: {{metrics: {{bind: null}}, drain_timeout_s: 0}}
    """)
    with Served(graph) as served:
        base = served.base
        served.pipeline.start()
        code, live = poll(lambda: probe(base, "/livez"), lambda r: r[0] == 503, 10)
        assert (code, live) == (503, {"state": "dead", "problems": ["stage fragile: its thread died"]})
        code, health = probe(base, "/health")
        assert (code, health["state"]) == (503, "failed")


# --------------------------------------------------------------------------- metrics


def scrape(base: str) -> dict:
    code, text = get(base, "/metrics")
    assert code == 200
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict, family: str, name: str, **labels) -> float:
    found = [s.value for s in families[family].samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, families[family].samples)
    return found[0]


def test_metrics_follow_prometheus_conventions(tmp_path):
    publish_port = free_port()
    graph = write_graph(tmp_path, f"""
        sources:
          - {{id: chair, uri: {CHAIR}}}
          - {{id: jacks, uri: {JACKS}}}
        stages:
          - {{id: work, type: noop}}
          - {{id: publish, type: publisher, bind: "tcp://127.0.0.1:{publish_port}"}}
        runtime: {{metrics: {{bind: null}}}}
    """)
    streams, stages = ("chair", "jacks"), ("work", "publish")
    with Served(graph) as served:
        families = scrape(served.base)
        # Before the first frame, every series the graph defines is there, at zero.
        for stream in streams:
            for name in ("frames_captured", "drops", "reconnects", "decode_errors"):
                assert sample(families, f"streampose_{name}", f"streampose_{name}_total", stream=stream) == 0
            assert sample(families, "streampose_e2e_latency_seconds", "streampose_e2e_latency_seconds_count",
                          stream=stream) == 0
            for stage in stages:
                for name in ("frames", "errors"):
                    assert sample(families, f"streampose_{name}", f"streampose_{name}_total",
                                  stage=stage, stream=stream) == 0
        for kind in ("pose", "event", "status"):
            assert sample(families, "streampose_published", "streampose_published_total", kind=kind) == 0

        served.pipeline.start()
        assert served.pipeline.wait(60)
        families = scrape(served.base)

    expected_help = {f"streampose_{n}": h for n, h in COUNTERS.items()}
    expected_help |= {f"streampose_{n}_seconds": h for n, h in HISTOGRAMS.items()}
    expected_help |= {f"streampose_{n}": h for n, h in GAUGES.items()}
    for name, family in families.items():
        if not name.startswith("streampose_") or name == "streampose_build_info":
            continue
        assert family.documentation == expected_help[name], name
        if family.type == "counter":
            assert {s.name for s in family.samples} <= {f"{name}_total", f"{name}_created"}
        elif family.type == "histogram":
            assert name.endswith("_seconds")
            assert {s.name for s in family.samples} == {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            assert family.type == "gauge", name
    assert {"streampose_frames", "streampose_e2e_latency_seconds", "streampose_stage_latency_seconds",
            "streampose_queue_depth"} <= set(families)

    # The histograms: cumulative buckets from 0.25 ms to 10 s and +Inf, which is the count.
    e2e = families["streampose_e2e_latency_seconds"]
    buckets = [s for s in e2e.samples if s.name.endswith("_bucket") and s.labels["stream"] == "chair"]
    assert [float(s.labels["le"]) for s in buckets] == [*LATENCY_BUCKETS, float("inf")]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and counts[-1] == 193
    assert sample(families, "streampose_e2e_latency_seconds", "streampose_e2e_latency_seconds_count",
                  stream="chair") == 193
    assert sample(families, "streampose_frames", "streampose_frames_total", stage="publish", stream="jacks") == 273
    assert sample(families, "streampose_published", "streampose_published_total", kind="pose") == 193 + 273

    # The process and the build.
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"} <= set(families)
    build = families["streampose_build_info"]
    assert build.type == "gauge" and build.samples[0].value == 1
    labels = build.samples[0].labels
    assert labels["version"] and labels["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(labels) >= {"openvino", "onnxruntime", "paddle", "av"}
