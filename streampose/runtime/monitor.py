"""Watching a running graph: /metrics, /health, /livez and /readyz over HTTP (and the live view's
page on the same port, streampose/web), and a periodic log line.

The server starts before the graph is built (loading models takes 6-8 s), answers `starting`
meanwhile, and serves the pipeline once `attach` hands it over.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import socket
import threading
from importlib import metadata
from typing import TYPE_CHECKING

import uvicorn
from prometheus_client import CollectorRegistry, Info, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from streampose import __version__
from streampose.runtime import health

if TYPE_CHECKING:  # importing the pipeline (its stages and their libraries) takes 1.6 s: not before serving
    from streampose.runtime.pipeline import Pipeline

log = logging.getLogger("streampose.metrics")

# Distributions whose version goes into streampose_build_info: the inference engines and the decoder.
ENGINE_PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime", "paddle": "paddlepaddle", "av": "av"}


class BindError(OSError):
    """The metrics address cannot be bound; the message names the cause and the fix."""


def build_info() -> dict[str, str]:
    """Labels of streampose_build_info: our version, Python's, and each engine library's."""
    info = {"version": __version__, "python": platform.python_version()}
    for label, package in ENGINE_PACKAGES.items():
        try:
            info[label] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[label] = "absent"
    return info


class _Attached:
    """Collector of the attached pipeline's metrics (none before it is attached)."""

    def __init__(self, server: MonitorServer):
        self.server = server

    def collect(self):
        pipeline = self.server.pipeline
        return pipeline.metrics.collect() if pipeline else iter(())


class MonitorServer:
    """Serves `/metrics` (Prometheus text) and `/health`, `/livez`, `/readyz` (JSON), from
    construction on, and any `routes` given (the live view's page); the pipeline's state once
    `attach`ed. An ASGI app (Starlette) under uvicorn, on its own thread and event loop. Raises
    BindError if `bind` is unusable, before anything slow has happened."""

    def __init__(self, bind: str, routes: list | None = None):
        self.pipeline: Pipeline | None = None
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        Info("streampose_build", "streampose build: its version, Python's and the engine libraries'",
             registry=registry).info(build_info())
        registry.register(_Attached(self))

        async def metrics(_request):
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        def probe(check):
            async def answer(_request):
                ok, body = check(self.pipeline)
                return JSONResponse(body, status_code=200 if ok else 503)
            return answer

        async def not_found(_request, _error):
            return PlainTextResponse("try /, /metrics, /health, /livez or /readyz\n", status_code=404)

        app = Starlette(routes=[Route("/metrics", metrics), Route("/health", probe(health.report)),
                                Route("/livez", probe(health.liveness)), Route("/readyz", probe(health.readiness)),
                                *(routes or [])], exception_handlers={404: not_found})
        host, _, port = bind.rpartition(":")
        fix = "choose another address with --set runtime.metrics.bind=HOST:PORT"
        if not port.isdigit():
            raise BindError(f"runtime.metrics.bind {bind}: expected HOST:PORT; {fix}")
        try:
            self.socket = socket.create_server((host or "127.0.0.1", int(port)))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                fix = (f"stop the other daemon or choose another port with "
                       f"--set runtime.metrics.bind={host or '127.0.0.1'}:{int(port) + 1}")
            reason = (os.strerror(error.errno) if error.errno else str(error)).lower()
            raise BindError(f"runtime.metrics.bind {bind}: {reason}; {fix}") from None
        self.address = "%s:%d" % self.socket.getsockname()[:2]
        # access_log off: scrapes and probes every few seconds would flood the log. wsproto: the
        # live view's WebSocket, in pure Python.
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="wsproto")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.socket]},
                                        name="monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on http://%s/metrics; /health, /livez and /readyz beside it", self.address)

    def attach(self, pipeline: Pipeline) -> None:
        """Serve this (built) pipeline's metrics and state from now on."""
        self.pipeline = pipeline

    def close(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(5)
        self.socket.close()


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
        for stream in self.pipeline.streams:
            captured = metrics.count("frames_captured", stream=stream)
            fps = (captured - self._last.get(stream, 0)) / self.interval_s
            self._last[stream] = captured
            latency = metrics.quantiles("e2e_latency", stream=stream)
            shown = f" e2e p50 {latency[0] * 1e3:.0f} ms p95 {latency[1] * 1e3:.0f} ms" if latency else ""
            state, _ = health.stream_state(self.pipeline, stream)
            sink_drops = metrics.count("sink_drops", stream=stream)
            behind = f", sink drops {sink_drops}" if sink_drops else ""
            parts.append(f"{stream} [{state}] {fps:.1f} fps, drops {metrics.count('drops', stream=stream)}{behind}{shown}")
        for stage_id in self.pipeline.runners:
            latency = metrics.quantiles("stage_latency", stage=stage_id)
            if latency:
                parts.append(f"{stage_id} {latency[0] * 1e3:.1f}/{latency[1] * 1e3:.1f} ms")
        return " | ".join(parts)
