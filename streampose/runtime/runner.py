"""One stage's thread: take batches from its queue, process, pass downstream."""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from streampose.frame import Event, Frame, StreamEvent
from streampose.graph import schema
from streampose.runtime.metrics import Metrics
from streampose.runtime.stage import Stage

log = logging.getLogger("streampose.runtime")

STOP = object()  # sentinel: one upstream has finished

# Batches over which a stage's cost per frame is averaged for its latency budget: a few, so
# the budget follows a change (more persons in view) within a second at 25 fps.
COST_MEMORY = 8


class Emitted(NamedTuple):
    """Events a stage raised outside any frame (Stage.emit), on their way downstream."""

    stream: str
    events: list[Event]

# A stage failing on every frame would log a traceback per frame (gigabytes a minute): an
# error is logged in full once, then the same error (stage, type, message) only as a count
# at most every REPEAT_LOG_S. Messages are cut to MAX_MESSAGE_CHARS.
REPEAT_LOG_S = 10.0
MAX_MESSAGE_CHARS = 1000


class ErrorLog:
    """Logs a stage's errors: a new one with its traceback, a repeat as a count."""

    def __init__(self, stage_id: str):
        self.stage_id = stage_id
        self._key: tuple[type, str] | None = None  # the error being repeated
        self._repeats = 0  # since it was last logged
        self._logged_at = 0.0  # time.monotonic() of that

    def failed(self, what: str, error: Exception) -> None:
        """`error` was raised on `what` (e.g. "stream cam1 frame 12")."""
        message = str(error)[:MAX_MESSAGE_CHARS]
        key, now = (type(error), message), time.monotonic()
        if key == self._key:
            self._repeats += 1
            if now - self._logged_at >= REPEAT_LOG_S:
                self._flush(f"last on {what}")
                self._logged_at = now
            return
        if self._repeats:
            self._flush("then a different error")
        self._key, self._logged_at = key, now
        trace = "".join(traceback.format_exception(error, limit=20))
        if len(trace) > 4 * MAX_MESSAGE_CHARS:
            trace = f"{trace[:2 * MAX_MESSAGE_CHARS]}\n... ({len(trace)} characters)\n{trace[-MAX_MESSAGE_CHARS:]}"
        log.error("stage %s failed on %s: %s", self.stage_id, what, trace.rstrip())

    def close(self) -> None:
        """Log the repeats not logged yet."""
        if self._repeats:
            self._flush("until the stage closed")

    def _flush(self, context: str) -> None:
        log.error("stage %s: the same error repeated %d times (%s): %s: %s", self.stage_id, self._repeats,
                  context, self._key[0].__name__, self._key[1])
        self._repeats = 0


class StageRunner:
    """Runs `stage` in a thread between `inbox` and the inboxes of its downstream stages.

    Frames, stream events and emitted events leave in the order they came, per stream; what
    the stage emits goes out before the frames or stream event it was handling. The runner
    stops after every upstream has sent STOP, then closes the stage and sends STOP on.
    `on_processed(frame)`, given to the last processor of the chain, is called for every frame
    it finished, before the frame goes on to the sinks.

    With a `host` (another runner), the stage has no thread or queue of its own: the host's thread
    runs it as it hands each item on (`put`), one frame at a time. On the full chain, handing a
    frame to another thread (queue, wake-up, the interpreter lock changing hands) cost more than
    the light stages' own work (docs/performance.md, "Light stages in the thread before them").
    """

    def __init__(self, stage: Stage, inbox: queue.Queue | None, upstreams: int, metrics: Metrics,
                 on_processed: Callable[[Frame], None] | None = None):
        self.stage = stage
        self.inbox = inbox  # None for a hosted stage
        self.host: StageRunner | None = None  # set by the pipeline before start
        self.outboxes: list[queue.Queue] = []
        self.upstreams = upstreams
        self.metrics = metrics
        self.on_processed = on_processed
        self.abort = threading.Event()  # set: discard frames instead of processing them
        self.done = False  # the loop ended normally; a thread gone without it died (see health.py)
        self.busy_since: float | None = None  # monotonic time the current batch started; None when idle
        batch: schema.Batch | None = getattr(stage.params, "batch", None)
        self.max_size = batch.max_size if batch else 1
        self.timeout_s = batch.timeout_ms / 1000 if batch else 0.0
        self.per_stream = batch.per_stream if batch else 0
        self.budget_s = batch.latency_budget_ms / 1000 if batch and batch.latency_budget_ms is not None else None
        self.frame_cost = 0.0  # seconds per frame over the recent batches (moving average), for the budget
        self._costed = 0  # batches in that average, up to COST_MEMORY
        self._held: deque = deque()  # items taken from the inbox but deferred to the next batch
        self.errors = ErrorLog(stage.id)
        # A stage that changes frames makes what sinks derived from them stale (Frame.changed).
        self.changes_frames = getattr(stage.params, "ROLE", "processor") != "sink"
        self._stops = 0  # upstreams that have sent STOP
        self._thread = threading.Thread(target=self._run, name=f"stage-{stage.id}", daemon=True)

    @property
    def thread(self) -> threading.Thread:
        """The thread the stage runs in: its own, or its host's."""
        return self.host.thread if self.host else self._thread

    def start(self) -> None:
        if self.host is None:
            self.thread.start()

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        """A hosted stage's input: handle `item` now, in the caller's (the host's) thread."""
        if isinstance(item, Frame):
            self._process([item])
        else:
            self._handle(item)

    # ------------------------------------------------------------------ batching

    def _next(self, timeout: float | None = None):
        """The next item: deferred ones first; timeout 0 means do not wait."""
        if self._held:
            return self._held.popleft()
        if timeout == 0:
            return self.inbox.get_nowait()
        return self.inbox.get(timeout=timeout)

    def _collect(self, first: Frame) -> list[Frame]:
        """A batch starting with `first`, as full as size, time, the latency budget and fairness allow."""
        batch = [first]
        counts = {first.stream: 1}
        deferred = []
        taken = time.monotonic()
        deadline = taken + self.timeout_s
        ender = None
        while len(batch) < self.max_size:
            wait_until = deadline
            if self.budget_s is not None:
                # The first frame must be through within the budget: stop before a frame whose
                # expected cost would overrun it, and wait for one no longer than it leaves.
                latest = taken + self.budget_s - (len(batch) + 1) * self.frame_cost
                if latest < time.monotonic():
                    break
                wait_until = min(wait_until, latest)
            try:
                item = self._next(timeout=max(wait_until - time.monotonic(), 0))
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
        self.metrics.observe("batch_wait", time.monotonic() - taken, stage=self.stage.id)
        return batch

    # ------------------------------------------------------------------ loop

    def _run(self) -> None:
        while not self.done:
            item = self._next()
            if isinstance(item, Frame):
                self._process(self._collect(item))
            else:
                self._handle(item)

    def _handle(self, item) -> None:
        """A STOP, stream event or emitted events: handled, then passed on in order."""
        if item is STOP:
            self._stops += 1
            if self._stops == self.upstreams:
                self._call(self.stage.finish, "close", "-")
                self._send_emitted()
                self.errors.close()
                self._send(STOP)
                self.done = True
        elif isinstance(item, StreamEvent):
            self._call(lambda: self.stage.stream_event(item), f"stream event {item.kind}", item.stream)
            self._send_emitted()
            self._send(item)
        else:  # Emitted
            self._call(lambda: self.stage.on_events(item.stream, item.events), "events", item.stream)
            self._send_emitted()
            self._send(item)

    def _process(self, batch: list[Frame]) -> None:
        if self.abort.is_set():
            for frame in batch:
                # Discarded unprocessed, so the stream's health counts it as failed.
                frame.failed_stages.append(self.stage.id)
                self._finish(frame)
            return
        start = self.busy_since = time.monotonic()
        added = [(len(frame.events), len(frame.ended_tracks)) for frame in batch]
        try:
            self.stage.run(batch)
        except Exception as error:
            # Retry one by one so a single bad frame does not fail its neighbours; Stage.run put
            # the stage's state back, and the frames lose what the failed batch added to them.
            if len(batch) > 1:
                for frame, (events, ended) in zip(batch, added):
                    del frame.events[events:], frame.ended_tracks[ended:]
                for frame in batch:
                    self._process_one(frame)
            else:
                self._failed(batch[0], error)
        elapsed = time.monotonic() - start
        self.busy_since = None
        # A moving average over about the last COST_MEMORY batches. Per frame, so a batch's
        # fixed overhead makes it overstate the cost of larger batches: the budget errs short.
        self._costed = min(self._costed + 1, COST_MEMORY)
        self.frame_cost += (elapsed / len(batch) - self.frame_cost) / self._costed
        self.metrics.observe("stage_latency", elapsed, stage=self.stage.id)
        self.metrics.observe("stage_frame_latency", elapsed / len(batch), stage=self.stage.id)
        self.metrics.inc("batches", stage=self.stage.id)
        self._send_emitted()
        for frame in batch:
            if self.changes_frames:
                frame.changed()
            frame.timings[self.stage.id] = elapsed
            self._finish(frame)

    def _process_one(self, frame: Frame) -> None:
        try:
            self.stage.run([frame])
        except Exception as error:
            self._failed(frame, error)

    def _failed(self, frame: Frame, error: Exception) -> None:
        self.errors.failed(f"stream {frame.stream} frame {frame.index}", error)
        frame.failed_stages.append(self.stage.id)
        self.metrics.inc("errors", stage=self.stage.id, stream=frame.stream)

    def _finish(self, frame: Frame) -> None:
        self.metrics.inc("frames", stage=self.stage.id, stream=frame.stream)
        if self.on_processed:
            self.on_processed(frame)
        self._send(frame)

    def _call(self, function, what: str, stream: str) -> None:
        try:
            function()
        except Exception as error:
            self.errors.failed(f"{what} (stream {stream})", error)
            self.metrics.inc("errors", stage=self.stage.id, stream=stream)

    def _send_emitted(self) -> None:
        outbox, self.stage.outbox = self.stage.outbox, []
        for stream, events in outbox:
            self._send(Emitted(stream, events))

    def _send(self, item) -> None:
        for outbox in self.outboxes:
            outbox.put(item)
