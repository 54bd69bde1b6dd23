"""The live view's side of the graph: the newest annotated JPEG of each watched stream, and the
recent events, for the web page the daemon serves (streampose/web).

A frame is drawn and encoded only while at least one browser watches its stream (the web
app counts them with `watch`/`unwatch`), at most `max_fps` a second, once however many watch.
Only the newest frame is kept: a browser that cannot keep up skips frames, it never queues
them, and nothing here ever waits for a browser. Listeners (the web app) are told of each new
frame and event from the stage's thread and must return at once.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2

from streampose import messages
from streampose.frame import Event, Frame
from streampose.graph import schema
from streampose.runtime.stage import Stage, StageContext
from streampose.sinks.draw import draw_frame


@dataclass(frozen=True)
class LiveFrame:
    jpeg: bytes
    capture_time: float  # time.time() of the frame's capture, seconds
    seq: int  # per stream, increasing


@dataclass
class FeedItem:
    """One event in the page's feed; `snapshot` is the annotated frame that raised it, as JPEG
    (empty for an event raised outside any frame)."""

    id: int
    message: dict  # the event message, as published (docs/messages.md)
    snapshot: bytes
    raised_at: float  # time.time() when the live stage got it, seconds
    acknowledged: bool = False

    def summary(self) -> dict:
        return {"id": self.id, "acknowledged": self.acknowledged, "raised_at": self.raised_at, **self.message}


@dataclass
class _Watched:
    watchers: int = 0
    last_encode: float = 0.0  # monotonic
    latest: LiveFrame | None = None
    seq: itertools.count = field(default_factory=itertools.count)


Listener = Callable[[str, object], None]  # ("frame", stream) or ("event", FeedItem)


class LiveStage(Stage):
    params: schema.Live

    def __init__(self, stage_id: str, params: schema.Live, context: StageContext):
        super().__init__(stage_id, params, context)
        self._kinds = frozenset(params.events)
        self._streams = {stream: _Watched() for stream in context.streams}
        self._lock = threading.Lock()
        self.feed: deque[FeedItem] = deque(maxlen=params.feed_size)
        self._ids = itertools.count(1)
        self.listeners: list[Listener] = []
        self.acknowledgements: deque[Event] = deque(maxlen=params.feed_size)  # raised by the page, not yet sent
        for stream in context.streams:
            context.metrics.declare("live_frames", stream=stream)
            context.metrics.gauge("live_watchers", lambda s=stream: self._streams[s].watchers, stream=stream)

    @property
    def streams(self) -> list[str]:
        return list(self._streams)

    def watch(self, stream: str) -> None:
        with self._lock:
            self._streams[stream].watchers += 1

    def unwatch(self, stream: str) -> None:
        with self._lock:
            self._streams[stream].watchers -= 1

    def latest(self, stream: str) -> LiveFrame | None:
        return self._streams[stream].latest

    def acknowledge(self, item_id: int) -> FeedItem | None:
        """Mark a feed item acknowledged; the `alarm_acknowledged` event goes out with the stream's next
        frame (through the graph's other sinks: MQTT, webhooks...)."""
        with self._lock:
            item = next((i for i in self.feed if i.id == item_id), None)
            if item is None or item.acknowledged:
                return item
            item.acknowledged = True
        message = item.message
        now = time.time()
        event = Event("alarm_acknowledged", message["stream"], message["track_id"], message["media_time"], now,
                      data={"kind": message["kind"], "capture_time": message["capture_time"]})
        with self._lock:
            self.acknowledgements.append(event)
        self._tell("ack", item)
        return item

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            self._emit_acknowledgements(frame.stream)
            if frame.events:
                self._send_events(frame)
            watched = self._streams[frame.stream]
            now = time.monotonic()
            if watched.watchers > 0 and now - watched.last_encode >= 1.0 / self.params.max_fps:
                watched.last_encode = now
                watched.latest = LiveFrame(self._encode(frame), frame.capture_time, next(watched.seq))
                self.context.metrics.inc("live_frames", stream=frame.stream)
                self._tell("frame", frame.stream)

    def _emit_acknowledgements(self, stream: str) -> None:
        """Acknowledgements come from the page's thread; they go out from this stage's own thread,
        with its next frame of their stream, on the runtime's path for events raised outside
        frames, to the stages after this one (`inputs: [live]`: MQTT, webhooks, the publisher)."""
        with self._lock:
            mine = [event for event in self.acknowledgements if event.stream == stream]
            for event in mine:
                self.acknowledgements.remove(event)
        self.emit(stream, mine)

    def on_events(self, stream: str, events: list[Event]) -> None:
        """Events raised outside any frame (someone down when the camera dropped) join the feed
        without a snapshot."""
        self._add_to_feed(events, None, b"")

    def _send_events(self, frame: Frame) -> None:
        """Add the chosen kinds among the frame's events to the feed, with the frame as snapshot."""
        if any(event.kind in self._kinds for event in frame.events):
            self._add_to_feed(frame.events, frame.index, self._encode(frame))

    def _add_to_feed(self, events: list[Event], frame_index: int | None, snapshot: bytes) -> None:
        for event in events:
            if event.kind not in self._kinds:
                continue
            item = FeedItem(next(self._ids), messages.event_message(event, frame_index), snapshot, time.time())
            with self._lock:
                self.feed.append(item)
            self._tell("event", item)

    def _encode(self, frame: Frame) -> bytes:
        image = draw_frame(frame)
        if image.shape[1] > self.params.width:
            height = round(image.shape[0] * self.params.width / image.shape[1])
            image = cv2.resize(image, (self.params.width, height), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.params.jpeg_quality])
        if not ok:
            raise RuntimeError(f"stream {frame.stream}: JPEG encoding of frame {frame.index} failed")
        return jpeg.tobytes()

    def _tell(self, what: str, subject: object) -> None:
        for listener in list(self.listeners):
            listener(what, subject)
