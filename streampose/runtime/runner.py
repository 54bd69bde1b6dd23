"""One stage's thread: take batches from its queue, process, pass downstream."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

from streampose.frame import Frame, StreamEvent
from streampose.graph import schema
from streampose.runtime.metrics import Metrics
from streampose.runtime.stage import Stage

log = logging.getLogger("streampose.runtime")

STOP = object()  # sentinel: one upstream has finished


class StageRunner:
    """Runs `stage` in a thread between `inbox` and the inboxes of its downstream stages.

    Frames and stream events leave in the order they came, per stream. The runner
    stops after every upstream has sent STOP, then closes the stage and sends STOP on.
    `on_leaf(frame)` is called for every frame it finished when it has no downstream.
    """

    def __init__(self, stage: Stage, inbox: queue.Queue, upstreams: int, metrics: Metrics,
                 on_leaf: Callable[[Frame], None]):
        self.stage = stage
        self.inbox = inbox
        self.outboxes: list[queue.Queue] = []
        self.upstreams = upstreams
        self.metrics = metrics
        self.on_leaf = on_leaf
        self.abort = threading.Event()  # set: discard frames instead of processing them
        self.done = False  # the loop ended normally; a thread gone without it died (see health.py)
        self.busy_since: float | None = None  # monotonic time the current batch started; None when idle
        batch: schema.Batch | None = getattr(stage.params, "batch", None)
        self.max_size = batch.max_size if batch else 1
        self.timeout_s = batch.timeout_ms / 1000 if batch else 0.0
        self.per_stream = batch.per_stream if batch else 0
        self._held: deque = deque()  # items taken from the inbox but deferred to the next batch
        self.thread = threading.Thread(target=self._run, name=f"stage-{stage.id}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    # ------------------------------------------------------------------ batching

    def _next(self, timeout: float | None = None):
        """The next item: deferred ones first; timeout 0 means do not wait."""
        if self._held:
            return self._held.popleft()
        if timeout == 0:
            return self.inbox.get_nowait()
        return self.inbox.get(timeout=timeout)

    def _collect(self, first: Frame) -> list[Frame]:
        """A batch starting with `first`, as full as size, time and fairness allow."""
        batch = [first]
        counts = {first.stream: 1}
        deferred = []
        deadline = time.monotonic() + self.timeout_s
        ender = None
        while len(batch) < self.max_size:
            try:
                item = self._next(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if not isinstance(item, Frame):
                ender = item
                break
            if self.per_stream and counts.get(item.stream, 0) >= self.per_stream:
                deferred.append(item)
                continue
            counts[item.stream] = counts.get(item.stream, 0) + 1
            batch.append(item)
        # Deferred frames go first next time, then whatever ended this batch, so
        # per-stream order holds.
        if ender is not None:
            deferred.append(ender)
        self._held.extendleft(reversed(deferred))
        return batch

    # ------------------------------------------------------------------ loop

    def _run(self) -> None:
        stops = 0
        while stops < self.upstreams:
            item = self._next()
            if item is STOP:
                stops += 1
            elif isinstance(item, StreamEvent):
                self._call(lambda: self.stage.on_stream_event(item), f"stream event {item.kind}", item.stream)
                self._send(item)
            else:
                self._process(self._collect(item))
        self._call(self.stage.close, "close", "-")
        self._send(STOP)
        self.done = True

    def _process(self, batch: list[Frame]) -> None:
        if self.abort.is_set():
            for frame in batch:
                # Discarded unprocessed, so the stream's health counts it as failed.
                frame.failed_stages.append(self.stage.id)
                self._finish(frame)
            return
        start = self.busy_since = time.monotonic()
        try:
            self.stage.process(batch)
        except Exception:
            # Retry one by one so a single bad frame does not fail its neighbours.
            if len(batch) > 1:
                for frame in batch:
                    self._process_one(frame)
            else:
                self._failed(batch[0])
        elapsed = time.monotonic() - start
        self.busy_since = None
        self.metrics.observe("stage_latency", elapsed, stage=self.stage.id)
        for frame in batch:
            frame.timings[self.stage.id] = elapsed
            self._finish(frame)

    def _process_one(self, frame: Frame) -> None:
        try:
            self.stage.process([frame])
        except Exception:
            self._failed(frame)

    def _failed(self, frame: Frame) -> None:
        log.exception("stage %s failed on stream %s frame %d", self.stage.id, frame.stream, frame.index)
        frame.failed_stages.append(self.stage.id)
        self.metrics.inc("errors", stage=self.stage.id, stream=frame.stream)

    def _finish(self, frame: Frame) -> None:
        self.metrics.inc("frames", stage=self.stage.id, stream=frame.stream)
        if self.outboxes:
            self._send(frame)
        else:
            self.on_leaf(frame)

    def _call(self, function, what: str, stream: str) -> None:
        try:
            function()
        except Exception:
            log.exception("stage %s failed on %s (stream %s)", self.stage.id, what, stream)
            self.metrics.inc("errors", stage=self.stage.id, stream=stream)

    def _send(self, item) -> None:
        for outbox in self.outboxes:
            outbox.put(item)
