"""The webhook stage against a local HTTP server that fails, stalls and recovers."""

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mosquitto import wait_for
from test_mqtt import write_graph

from conftest import MODELS
from streampose.frame import Event
from streampose.graph import schema
from streampose.graph.loader import load_graph
from streampose.runtime.metrics import Metrics
from streampose.runtime.pipeline import Pipeline
from streampose.runtime.stage import StageContext
from streampose.sinks.webhook import WebhookStage

SECRET = "a-test-secret-of-32-characters!!"


class Receiver:
    """An HTTP server answering each POST as `script` says, in turn: an int is the status code,
    "stall" holds the request until the test ends; after the script, 200."""

    def __init__(self, script):
        self.script, self.requests, self.release = list(script), [], threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                action = receiver.script.pop(0) if receiver.script else 200
                if action == "stall":
                    receiver.release.wait(60)
                    return
                self.send_response(action)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(script):
        made.append(Receiver(script))
        return made[-1]
    yield make
    for r in made:
        r.close()


def test_a_fall_alarm_survives_a_failing_then_stalling_receiver_signed_and_counted(tmp_path, receiver):
    server = receiver([500, "stall", 200])
    hook = {"id": "hook", "type": "webhook", "url": server.url, "secret": SECRET, "events": ["fall_confirmed"],
            "timeout_s": 0.5, "backoff_s": 0.05, "retries": 4}
    pipeline = Pipeline(load_graph(write_graph(tmp_path, [hook])), model_paths=[MODELS], output_dir=tmp_path)
    pipeline.start()
    assert pipeline.wait(120) and pipeline.shutdown()
    alarms = pipeline.metrics.count("events", kind="fall_confirmed")
    assert alarms >= 1
    # attempt 1: 500, attempt 2: stalled past timeout_s, attempt 3: delivered (for the first alarm)
    assert len(server.requests) == 3 + (alarms - 1)
    first = [(h, b) for h, b in server.requests[:3]]
    assert len({h["X-Streampose-Delivery"] for h, _ in first}) == 1  # one delivery id across retries
    for headers, body in server.requests:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Streampose-Signature"] == expected
        assert headers["Content-Type"] == "application/json" and headers["X-Streampose-Event"] == "fall_confirmed"
        message = json.loads(body)
        assert message["type"] == "event" and message["kind"] == "fall_confirmed"
    counts = pipeline.metrics.count_by("webhook_requests", "result", stage="hook")
    assert counts == {"delivered": alarms, "failed": 2, "given_up": 0, "dropped": 0}
    assert pipeline.metrics.quantiles("webhook_latency", stage="hook") is not None


def event(kind="fall_confirmed", i=0):
    return Event(kind, "cam", 1, float(i), 1.0 + i)


def make_stage(tmp_path, url, **params):
    params = {"id": "hook", "type": "webhook", "url": url, "secret": SECRET, **params}
    return WebhookStage("hook", schema.Webhook(**params), StageContext(tmp_path, tmp_path, metrics=Metrics()))


def test_the_queue_is_bounded_a_4xx_is_not_retried_and_only_chosen_kinds_go(tmp_path, receiver):
    server = receiver(["stall", 400])
    stage = make_stage(tmp_path, server.url, queue_size=2, timeout_s=1.0, backoff_s=0.05, retries=3)
    stage.on_events("cam", [event(i=0)])
    wait_for(lambda: server.requests, 5, "the first request")  # the sender is now stalled on it
    stage.on_events("cam", [event(i=1), event("rep", 2), event(i=3), event(i=4)])
    metrics = stage.context.metrics
    assert metrics.count("webhook_requests", result="dropped") == 1  # i=4: the queue held i=1 and i=3
    stage.close()
    counts = metrics.count_by("webhook_requests", "result")
    # i=0: stalled (failed), then 400 (failed, not retried, given up); i=1 and i=3 delivered
    assert counts == {"delivered": 2, "failed": 2, "given_up": 1, "dropped": 1}
    kinds = [json.loads(body)["kind"] for _, body in server.requests]
    assert kinds == ["fall_confirmed"] * 4 and [json.loads(b)["media_time"] for _, b in server.requests[2:]] == [1, 3]


def test_an_unreachable_receiver_is_retried_with_backoff_then_given_up(tmp_path):
    stage = make_stage(tmp_path, "http://127.0.0.1:9/hook", retries=2, backoff_s=0.05, timeout_s=0.5)
    stage.on_events("cam", [event()])
    stage.close()
    assert stage.context.metrics.count_by("webhook_requests", "result") == {
        "delivered": 0, "failed": 3, "given_up": 1, "dropped": 0}
