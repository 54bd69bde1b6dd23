"""POSTs chosen events as JSON to a URL, signed, from a bounded queue with retries.

Each event is one request: the body is the event message (docs/messages.md, as on ZeroMQ's
event/STREAM), UTF-8 JSON, with headers

    Content-Type: application/json
    X-Streampose-Event: fall_confirmed
    X-Streampose-Delivery: a UUID, the same on every retry of one event (deduplicate on it)
    X-Streampose-Signature: sha256=<hex HMAC-SHA256 of the body with `secret`>

The pipeline only appends to the queue; one thread sends, in order. A connection error, a
timeout, a 5xx or a 429 answer is retried after backoff_s, then twice that, ... up to
max_backoff_s, `retries` times; a 4xx answer (the receiver refuses this event) is not. A full
queue drops the newest event. Every outcome is counted in streampose_webhook_requests.
"""

from __future__ import annotations

import hashlib
import hmac
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid

from streampose import messages
from streampose.frame import Event, Frame
from streampose.graph import schema
from streampose.runtime.stage import Stage, StageContext

SIGNATURE_HEADER = "X-Streampose-Signature"


def signature(secret: str, body: bytes) -> str:
    """The value of X-Streampose-Signature for `body`: "sha256=" and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookStage(Stage):
    params: schema.Webhook

    def __init__(self, stage_id: str, params: schema.Webhook, context: StageContext):
        super().__init__(stage_id, params, context)
        self._kinds = frozenset(params.events)
        self._queue: queue.Queue[tuple[bytes, str, float] | None] = queue.Queue(params.queue_size)
        self._abort = threading.Event()  # set at close once the drain time is over: no more retries
        if params.secret is None:
            self.log.warning("webhook %s: no secret; receivers cannot tell its requests from forged ones", stage_id)
        for result in ("delivered", "failed", "given_up", "dropped"):
            context.metrics.declare("webhook_requests", stage=stage_id, result=result)
        context.metrics.declare("webhook_latency", stage=stage_id)
        context.metrics.gauge("webhook_queue", self._queue.qsize, stage=stage_id)
        self._thread = threading.Thread(target=self._run, name=f"webhook-{stage_id}", daemon=True)
        self._thread.start()

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.events:
                self._send_events(frame.stream, frame.events, frame.index)

    def on_events(self, stream: str, events: list[Event]) -> None:
        self._send_events(stream, events, None)   # raised outside any frame: the message's frame is null

    def _send_events(self, stream: str, events: list[Event], frame_index: int | None) -> None:
        """Queue the chosen kinds among `events` of `stream`."""
        for event in events:
            if event.kind not in self._kinds:
                continue
            body = messages.encode(messages.event_message(event, frame_index), "json")
            try:
                self._queue.put_nowait((body, event.kind, event.capture_time))
            except queue.Full:
                self.context.metrics.inc("webhook_requests", stage=self.id, result="dropped")
                self.log.warning("webhook %s: queue full (%d events); dropped %s of stream %s", self.id,
                                 self.params.queue_size, event.kind, stream)

    def close(self) -> None:
        # Time for what is queued to go out while the receiver answers; then stop retrying.
        self._queue.put(None)
        self._thread.join(self.params.timeout_s * 2 + 1)
        self._abort.set()
        self._thread.join(self.params.timeout_s + 1)

    # ------------------------------------------------------------------ the sending thread

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            body, kind, capture_time = item
            if self._deliver(body, kind):
                self.context.metrics.observe("webhook_latency", time.time() - capture_time, stage=self.id)
        left = self._queue.qsize()
        if left:
            self.context.metrics.inc("webhook_requests", left, stage=self.id, result="given_up")

    def _deliver(self, body: bytes, kind: str) -> bool:
        p = self.params
        headers = {"Content-Type": "application/json", "User-Agent": "streampose",
                   "X-Streampose-Event": kind, "X-Streampose-Delivery": str(uuid.uuid4())}
        if p.secret is not None:
            headers[SIGNATURE_HEADER] = signature(p.secret, body)
        wait = p.backoff_s
        for attempt in range(p.retries + 1):
            if attempt and self._abort.wait(wait):
                break
            wait = min(wait * 2, p.max_backoff_s)
            request = urllib.request.Request(p.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=p.timeout_s) as answer:
                    answer.read()
                self.context.metrics.inc("webhook_requests", stage=self.id, result="delivered")
                return True
            except urllib.error.HTTPError as error:
                error.close()
                self.context.metrics.inc("webhook_requests", stage=self.id, result="failed")
                if 400 <= error.code < 500 and error.code != 429:
                    self.log.error("webhook %s: %s refused %s with %d %s; not retried", self.id, p.url, kind,
                                   error.code, error.reason)
                    break
                problem = f"{error.code} {error.reason}"
            except (OSError, ValueError) as error:  # refused, reset, timed out, DNS...
                self.context.metrics.inc("webhook_requests", stage=self.id, result="failed")
                problem = str(getattr(error, "reason", error))
            self.log.warning("webhook %s: attempt %d of %d to %s failed (%s)", self.id, attempt + 1,
                             p.retries + 1, p.url, problem)
        self.context.metrics.inc("webhook_requests", stage=self.id, result="given_up")
        return False
