"""Watching a running graph: /metrics and /health over HTTP, and a periodic log line."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from streampose.runtime.pipeline import Pipeline

log = logging.getLogger("streampose.metrics")


class MonitorServer:
    """Serves `/metrics` (Prometheus text) and `/health` (JSON) for one pipeline."""

    def __init__(self, pipeline: Pipeline, bind: str):
        host, _, port = bind.rpartition(":")
        registry = CollectorRegistry()
        registry.register(pipeline.metrics)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                if self.path == "/metrics":
                    self._reply(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif self.path == "/health":
                    health = pipeline.health()
                    code = 200 if health["state"] in ("running", "starting") else 503
                    self._reply(code, "application/json", json.dumps(health).encode())
                else:
                    self._reply(404, "text/plain", b"try /metrics or /health\n")

            def _reply(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes every few seconds would flood the log
                pass

        self.server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        self.server.daemon_threads = True
        self.address = f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on http://%s/metrics, health on http://%s/health", self.address, self.address)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class PeriodicLog:
    """Logs one compact line per stream every `interval_s`: fps, drops, latency."""

    def __init__(self, pipeline: Pipeline, interval_s: float):
        self.pipeline = pipeline
        self.interval_s = interval_s
        self._last: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-log", daemon=True)

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            log.info(self.line())

    def line(self) -> str:
        metrics = self.pipeline.metrics
        parts = []
        for stream, state in self.pipeline.streams.items():
            captured = metrics.count("frames_captured", stream=stream)
            fps = (captured - self._last.get(stream, 0)) / self.interval_s
            self._last[stream] = captured
            latency = metrics.quantiles("e2e_latency", stream=stream)
            shown = f" e2e p50 {latency[0] * 1e3:.0f} ms p95 {latency[1] * 1e3:.0f} ms" if latency else ""
            parts.append(f"{stream} [{state.state}] {fps:.1f} fps, drops {metrics.count('drops', stream=stream)}"
                         f"{shown}")
        for stage_id in self.pipeline.runners:
            latency = metrics.quantiles("stage_latency", stage=stage_id)
            if latency:
                parts.append(f"{stage_id} {latency[0] * 1e3:.1f}/{latency[1] * 1e3:.1f} ms")
        return " | ".join(parts)
