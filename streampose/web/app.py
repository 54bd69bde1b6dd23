"""The live view: a page with each stream's annotated video and numbers, and the event feed.

Served by the daemon's monitor server (runtime.metrics.bind, beside /metrics and the probes) as
Starlette routes:

    GET  /                               the page (static/index.html: plain HTML and JavaScript)
    GET  /api/streams                    each stream's state, fps, drops and latency
    GET  /api/events                     the feed: recent events, newest last
    GET  /api/events/{id}/snapshot.jpg   the annotated frame that raised the event
    GET  /api/events/{id}/clip.mp4       its clip, once the clips stage has written it (404 before)
    POST /api/events/{id}/acknowledge    publishes `alarm_acknowledged` (MQTT, webhooks, ZeroMQ...)
    WS   /ws                             the page's live channel, below

The WebSocket carries, to the page: binary frames (2-byte big-endian header length, a JSON header
{"stream", "capture_time", "seq"}, then the JPEG) and text JSON messages {"type": "event" | "ack"
| "stats", ...}; from the page: {"watch": [stream ids]}. Each connection sends a stream's newest
frame when it has sent the previous one, so a slow browser skips frames instead of queueing them,
and the graph never waits for it.

Beyond loopback every route of the page needs the token (`?token=` once, then a cookie);
/metrics and the probes stay open for Prometheus and supervisors.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import struct
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from streampose.runtime import health

if TYPE_CHECKING:  # the sinks import OpenCV and PyAV (0.8 s): not before the server answers
    from streampose.runtime.pipeline import Pipeline
    from streampose.sinks.live import FeedItem, LiveStage

log = logging.getLogger("streampose.web")
COOKIE = "streampose_token"
STATS_PERIOD_S = 1.0
MAX_SIDECARS = 200  # newest clip sidecars of a stream searched for an event's clip
EVENT_BACKLOG = 100  # events waiting for one slow page; beyond it the oldest go (the feed has them all)


class _Connection:
    """One page's WebSocket: what it watches, what it was sent, and a wake-up for news."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.sent: dict[str, int] = {}  # stream -> seq of the last frame sent
        self.messages: asyncio.Queue[dict] = asyncio.Queue(EVENT_BACKLOG)

    def post(self, message: dict) -> None:
        if self.messages.full():
            self.messages.get_nowait()
        self.messages.put_nowait(message)
        self.wake.set()


class LiveView:
    """The routes of the page, bound to the pipeline the monitor server holds (None while starting)."""

    def __init__(self, pipeline: Callable[[], Pipeline | None], token: str | None):
        self._pipeline = pipeline
        self.token = token
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listening: LiveStage | None = None
        self._fps: dict[str, tuple[float, int]] = {}  # stream -> (monotonic time, frames captured) of last stats
        self._stats: dict = {}

    def routes(self) -> list:
        return [Route("/", self.page), Route("/api/streams", self.streams), Route("/api/events", self.events),
                Route("/api/events/{id:int}/snapshot.jpg", self.snapshot),
                Route("/api/events/{id:int}/clip.mp4", self.clip),
                Route("/api/events/{id:int}/acknowledge", self.acknowledge, methods=["POST"]),
                WebSocketRoute("/ws", self.websocket)]

    # ------------------------------------------------------------------ access

    def _allowed(self, connection: Request | WebSocket) -> bool:
        if self.token is None:
            return True
        given = connection.query_params.get("token") or connection.cookies.get(COOKIE) or ""
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _refused(self) -> Response:
        return Response("token required: open the page as /?token=YOUR_TOKEN (runtime.metrics.token)\n", 401)

    def _live(self) -> LiveStage | None:
        pipeline = self._pipeline()
        if pipeline is None:
            return None
        from streampose.sinks.live import LiveStage  # loaded with the pipeline by now
        return next((r.stage for r in pipeline.runners.values() if isinstance(r.stage, LiveStage)), None)

    # ------------------------------------------------------------------ HTTP routes

    async def page(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._refused()
        html = resources.files("streampose.web").joinpath("static/index.html").read_text()
        response = HTMLResponse(html)
        if self.token is not None and request.query_params.get("token"):
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        return response

    async def streams(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._refused()
        return JSONResponse(self._stream_stats())

    async def events(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._refused()
        live = self._live()
        return JSONResponse([item.summary() for item in list(live.feed)] if live else [])

    def _item(self, request: Request) -> FeedItem | None:
        live = self._live()
        wanted = request.path_params["id"]
        return next((i for i in list(live.feed) if i.id == wanted), None) if live else None

    async def snapshot(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._refused()
        item = self._item(request)
        if item is None:
            return Response("no such event in the feed\n", 404)
        if not item.snapshot:
            return Response("this event was raised outside any frame: it has no snapshot\n", 404)
        return Response(item.snapshot, media_type="image/jpeg")

    async def clip(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._refused()
        item = self._item(request)
        path = None if item is None else await asyncio.to_thread(self._find_clip, item)
        if path is None:
            return Response("no clip for this event (yet): clips are written post_s after the event\n", 404)
        return FileResponse(path, media_type="video/mp4")

    async def acknowledge(self, request: Request) -> Response:
        if not self._allowed(request):
            return self._refused()
        live = self._live()
        item = live.acknowledge(request.path_params["id"]) if live else None
        if item is None:
            return Response("no such event in the feed\n", 404)
        return JSONResponse(item.summary())

    def _find_clip(self, item: FeedItem) -> Path | None:
        """The clip whose sidecar lists this event (same stream, kind and capture time)."""
        from streampose.sinks.clips import ClipStage
        pipeline = self._pipeline()
        clips = [r.stage for r in pipeline.runners.values() if isinstance(r.stage, ClipStage)] if pipeline else []
        live = self._live()
        if live.params.clips is not None:
            clips = [stage for stage in clips if stage.id == live.params.clips]
        message = item.message
        for stage in clips[:1]:
            # Only {stream} may appear in a clip path's folders, so the stream's clips share one folder.
            folder = stage.paths.output_dir / str(Path(stage.paths.template).parent).format(stream=message["stream"])
            sidecars = folder.glob("*.json") if folder.is_dir() else ()
            for sidecar in sorted(sidecars, key=lambda p: p.stat().st_mtime, reverse=True)[:MAX_SIDECARS]:
                try:
                    data = json.loads(sidecar.read_text())
                except (OSError, ValueError):
                    continue
                if not isinstance(data, dict) or data.get("stream") != message["stream"]:
                    continue
                if any(e.get("kind") == message["kind"] and e.get("capture_time") == message["capture_time"]
                       for e in data.get("events", [])):
                    mp4 = sidecar.with_suffix(".mp4")
                    return mp4 if mp4.is_file() else None
        return None

    # ------------------------------------------------------------------ the live channel

    async def websocket(self, socket: WebSocket) -> None:
        if not self._allowed(socket):
            await socket.close(code=1008)
            return
        await socket.accept()
        live = self._live()
        if live is None:
            await socket.close(code=1013, reason="the graph has no live stage, or is still starting")
            return
        self._listen(live)
        connection = _Connection()
        self._connections.add(connection)
        watched: list[str] = []
        receiver = asyncio.create_task(self._receive(socket, connection, live, watched))
        try:
            stats_due = 0.0
            while not receiver.done():
                if time.monotonic() >= stats_due:
                    stats_due = time.monotonic() + STATS_PERIOD_S
                    connection.post({"type": "stats", "streams": self._stream_stats()})
                try:
                    await asyncio.wait_for(connection.wake.wait(), max(stats_due - time.monotonic(), 0.01))
                except TimeoutError:
                    pass
                connection.wake.clear()
                while not connection.messages.empty():
                    await socket.send_text(json.dumps(connection.messages.get_nowait()))
                for stream in list(watched):
                    frame = live.latest(stream)
                    if frame is not None and frame.seq != connection.sent.get(stream):
                        connection.sent[stream] = frame.seq
                        header = json.dumps({"stream": stream, "capture_time": frame.capture_time,
                                             "seq": frame.seq}).encode()
                        await socket.send_bytes(struct.pack(">H", len(header)) + header + frame.jpeg)
        except (WebSocketDisconnect, RuntimeError):  # the page went away while we sent
            pass
        finally:
            receiver.cancel()
            self._connections.discard(connection)
            for stream in watched:
                live.unwatch(stream)

    async def _receive(self, socket: WebSocket, connection: _Connection, live: LiveStage,
                       watched: list[str]) -> None:
        try:
            while True:
                message = json.loads(await socket.receive_text())
                wanted = [s for s in message.get("watch", []) if s in live.streams]
                for stream in set(watched) - set(wanted):
                    live.unwatch(stream)
                for stream in set(wanted) - set(watched):
                    live.watch(stream)
                watched[:] = wanted
                connection.wake.set()
        except (WebSocketDisconnect, ValueError, AttributeError, RuntimeError):
            connection.wake.set()

    def _listen(self, live: LiveStage) -> None:
        """Hear the live stage's news (on its thread) on this event loop."""
        if self._listening is live:
            return
        self._loop = asyncio.get_running_loop()
        self._listening = live
        live.listeners.append(lambda what, subject: self._loop.call_soon_threadsafe(self._news, what, subject))

    def _news(self, what: str, subject) -> None:
        for connection in self._connections:
            if what == "frame":
                connection.wake.set()
            else:
                connection.post({**subject.summary(), "type": what})  # the message's own type is "event"

    def _stream_stats(self) -> dict:
        pipeline = self._pipeline()
        if pipeline is None:
            return {}
        now, stats = time.monotonic(), {}
        for stream in pipeline.streams:
            captured = pipeline.metrics.count("frames_captured", stream=stream)
            then, before = self._fps.get(stream, (now, captured))
            if now - then >= STATS_PERIOD_S or stream not in self._stats:
                fps = (captured - before) / (now - then) if now > then else 0.0
                self._fps[stream] = (now, captured)
                self._stats[stream] = round(fps, 1)
            state, reason = health.stream_state(pipeline, stream)
            latency = pipeline.metrics.quantiles("e2e_latency", since_s=10, stream=stream)
            stats[stream] = {"state": state, "reason": reason, "fps": self._stats[stream],
                             "frames": captured, "drops": pipeline.metrics.count("drops", stream=stream),
                             "latency_p50_ms": round(latency[0] * 1e3, 1) if latency else None,
                             "latency_p95_ms": round(latency[1] * 1e3, 1) if latency else None}
        return stats
