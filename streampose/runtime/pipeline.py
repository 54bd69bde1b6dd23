"""A running graph: source threads feed stage threads through bounded queues.

Flow control happens once, at the entrance: each stream may have at most
`runtime.in_flight` frames inside the graph. A live stream's frame that finds no
free slot is dropped there and counted, so the freshest frames get in and no
backlog builds; a file stream's frame waits for a slot, so every frame is
processed. A frame's slot is freed when every leaf stage it reaches is done. The
source asks before converting a frame (runtime.admission), so a dropped frame costs
only its decoding, and an overloaded live stream is let in at an even rate.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from streampose import messages
from streampose.frame import Frame, StreamEvent
from streampose.graph.loader import LoadedGraph
from streampose.runtime.admission import Admission
from streampose.runtime.cores import plan_cores
from streampose.runtime.disk_budget import DiskBudget
from streampose.runtime.health import StreamLoad
from streampose.runtime.metrics import Metrics
from streampose.runtime.runner import STOP, StageRunner
from streampose.runtime import stage as stage_module
from streampose.runtime.stage import StageContext
from streampose.sources.capture import Capture

log = logging.getLogger("streampose.runtime")


class StageBuildError(RuntimeError):
    """A stage could not be built (model missing, bad path...); names the stage."""


@dataclass
class StreamState:
    """What /health reports for one stream (health.stream_state adds `overloaded`)."""

    state: str = "connecting"  # connecting, running, reconnecting, ended, failed, degraded
    detail: str = ""
    consecutive_failures: int = 0
    first_frame_wall: float = 0.0
    last_frame_wall: float = 0.0


class EntranceGate:
    """At most `limit` frames of one stream inside the graph."""

    def __init__(self, limit: int, live: bool):
        self.slots = threading.BoundedSemaphore(limit)
        self.live = live

    def admit(self, stop: threading.Event) -> bool:
        if self.live:
            return self.slots.acquire(blocking=False)
        while not stop.is_set():
            if self.slots.acquire(timeout=0.1):
                return True
        return False

    def release(self) -> None:
        self.slots.release()


class Pipeline:
    """Builds the stages of a graph and runs them until the sources end or `stop()`."""

    def __init__(self, graph: LoadedGraph, model_paths: list[Path] | None = None,
                 output_dir: Path | None = None):
        self.graph = graph
        spec = graph.spec
        self.metrics = Metrics()
        self.output_dir = Path(output_dir or spec.runtime.output_dir).resolve()
        self.lifecycle = "starting"  # then running (start) and stopping (stop)
        self.streams = {s.id: StreamState() for s in spec.sources}
        self._stop = threading.Event()
        budget = spec.runtime.disk_budget_mb
        self.disk_budget = DiskBudget(self.output_dir, budget, self._stop) if budget else None
        self._lock = threading.Lock()
        self._remaining: dict[tuple[str, int], int] = {}

        downstream: dict[str, list[str]] = {name: [] for name in [s.id for s in spec.sources] + list(graph.inputs)}
        for stage_id, inputs in graph.inputs.items():
            for name in inputs:
                downstream[name].append(stage_id)
        self._paths_to_leaves = {s.id: self._count_paths(s.id, downstream) for s in spec.sources}
        self._declare_metrics()

        self.cores = plan_cores(spec)
        engine_cache = Path(spec.runtime.engine_cache_dir).resolve() if spec.runtime.engine_cache_dir else None
        self.captures = {s.id: Capture(s, graph.path.parent, lambda name, sid=s.id: self.metrics.inc(name, stream=sid),
                                       decoder_threads=self.cores.decoder_threads)
                         for s in spec.sources}
        self.gates = {sid: EntranceGate(spec.runtime.in_flight, cap.live) for sid, cap in self.captures.items()}
        self.loads = {sid: StreamLoad(spec.runtime.health.window_s) for sid, cap in self.captures.items() if cap.live}
        self.admissions = {sid: Admission(sid, cap.live, spec.runtime.even_drops, self.gates[sid].admit,
                                          self.loads[sid].record if sid in self.loads else None,
                                          self.metrics, self._stop)
                           for sid, cap in self.captures.items()}
        self.inboxes = {st.id: queue.Queue(spec.runtime.queue_size) for st in spec.stages}
        self.runners: dict[str, StageRunner] = {}
        for st in spec.stages:
            context = StageContext(graph_dir=graph.path.parent, output_dir=self.output_dir,
                                   model_paths=list(model_paths or []),
                                   streams=self._streams_reaching(st.id), metrics=self.metrics,
                                   threads=self.cores.engine_threads.get(st.id, 0), engine_cache=engine_cache)
            try:
                stage = stage_module.stage_class(st)(st.id, st, context)
            except Exception as error:
                raise StageBuildError(f"stage '{st.id}' ({st.type}): {error}") from error
            self.runners[st.id] = StageRunner(stage, self.inboxes[st.id], upstreams=len(graph.inputs[st.id]),
                                              metrics=self.metrics, on_leaf=self._on_leaf)
            self.metrics.gauge("queue_depth", self.inboxes[st.id].qsize, stage=st.id)
        for stage_id, runner in self.runners.items():
            runner.outboxes = [self.inboxes[d] for d in downstream[stage_id]]
        self._source_outboxes = {sid: [self.inboxes[d] for d in downstream[sid]] for sid in self.captures}
        self.source_threads = {sid: threading.Thread(target=self._pump, args=(sid,), name=f"source-{sid}", daemon=True)
                               for sid in self.captures}

    # ------------------------------------------------------------------ topology

    @staticmethod
    def _count_paths(node: str, downstream: dict[str, list[str]]) -> int:
        """How many times a frame from `node` arrives at a leaf (once per path)."""
        children = downstream[node]
        return sum(Pipeline._count_paths(c, downstream) if downstream[c] else 1 for c in children)

    def _declare_metrics(self) -> None:
        """Every series the graph can emit, at zero, so each exists before its first event."""
        for stream in self.streams:
            for name in ("frames_captured", "drops", "reconnects", "decode_errors", "e2e_latency"):
                self.metrics.declare(name, stream=stream)
        for st in self.graph.spec.stages:
            self.metrics.declare("stage_latency", stage=st.id)
            self.metrics.declare("batch_wait", stage=st.id)
            self.metrics.declare("batches", stage=st.id)
            for stream in self._streams_reaching(st.id):
                self.metrics.declare("frames", stage=st.id, stream=stream)
                self.metrics.declare("errors", stage=st.id, stream=stream)
            if st.type == "publisher":
                for kind in messages.KINDS:
                    self.metrics.declare("published", kind=kind)

    def _streams_reaching(self, stage_id: str) -> list[str]:
        found, todo, seen = [], [stage_id], set()
        while todo:
            for name in self.graph.inputs.get(todo.pop(), []):
                if name in self.streams and name not in found:
                    found.append(name)
                elif name not in seen:
                    seen.add(name)
                    todo.append(name)
        return found

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for runner in self.runners.values():
            runner.start()
        for thread in self.source_threads.values():
            thread.start()
        if self.disk_budget:
            self.disk_budget.start()
        if self.lifecycle == "starting":  # not if a signal has already stopped it
            self.lifecycle = "running"
        log.info("graph %s started: %d sources, %d stages", self.graph.path.name, len(self.captures), len(self.runners))
        log.info("core plan: %s", self.cores.describe())

    def stop(self) -> None:
        """Ask the sources to stop; the graph then drains and closes."""
        if not self._stop.is_set():
            log.info("stopping: sources close, frames in flight drain")
            self.lifecycle = "stopping"
            self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every stage has closed; True if it did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for runner in self.runners.values():
            left = None if deadline is None else max(deadline - time.monotonic(), 0)
            runner.thread.join(left)
            if runner.thread.is_alive():
                return False
        return True

    def shutdown(self) -> bool:
        """Stop, drain within the graph's drain timeout, then close every stage.

        Frames still queued after the timeout are discarded (not processed), so a
        stuck model cannot keep recordings from being finalised.
        """
        self.stop()
        drain = self.graph.spec.runtime.drain_timeout_s
        if self.wait(drain):
            return True
        log.warning("frames still in flight after %.1f s: discarding them", drain)
        for runner in self.runners.values():
            runner.abort.set()
        return self.wait(max(drain, 5.0))

    def _pump(self, stream: str) -> None:
        """Source thread: send the frames the stream's admission lets in, and its events, downstream."""
        capture, outboxes = self.captures[stream], self._source_outboxes[stream]
        leaves = self._paths_to_leaves[stream]
        try:
            for item in capture.frames(self._stop, admit=self.admissions[stream].admit):
                if isinstance(item, StreamEvent):
                    self._on_stream_event(item)
                    for outbox in outboxes:
                        outbox.put(item)
                    continue
                with self._lock:
                    self._remaining[stream, item.index] = leaves
                for outbox in outboxes:
                    outbox.put(item)
        except Exception as error:
            log.exception("source %s failed", stream)
            ended = StreamEvent(stream, "ended", 0, f"source failed: {error}", time.time(), failed=True)
            self._on_stream_event(ended)
            for outbox in outboxes:
                outbox.put(ended)
        finally:
            for outbox in outboxes:
                outbox.put(STOP)

    def _on_stream_event(self, event: StreamEvent) -> None:
        state = self.streams[event.stream]
        state.state = "failed" if event.failed else {"opened": "running", "lost": "reconnecting",
                                                     "ended": "ended"}[event.kind]
        state.detail = event.detail
        level = logging.ERROR if event.failed else logging.WARNING if event.kind == "lost" else logging.INFO
        log.log(level, "stream %s %s%s", event.stream, "failed" if event.failed else event.kind,
                f": {event.detail}" if event.detail else "")

    def _on_leaf(self, frame: Frame) -> None:
        key = (frame.stream, frame.index)
        now = time.time()
        with self._lock:
            self._remaining[key] -= 1
            done = self._remaining[key] == 0
            if done:
                del self._remaining[key]
                # Judged once the frame has passed the whole graph: a later stage's
                # success must not hide an earlier stage's failure.
                self._record_result(frame, ok=not frame.failed_stages, now=now)
        if done:
            self.gates[frame.stream].release()
            self.metrics.observe("e2e_latency", now - frame.capture_time, stream=frame.stream)

    def _record_result(self, frame: Frame, ok: bool, now: float) -> None:
        state = self.streams[frame.stream]
        state.last_frame_wall = now
        state.first_frame_wall = state.first_frame_wall or now
        if ok:
            if state.state == "degraded":
                state.state = "running"
            state.consecutive_failures = 0
        else:
            state.consecutive_failures += 1
            if state.consecutive_failures >= self.graph.spec.runtime.degraded_after and state.state == "running":
                state.state = "degraded"
                log.error("stream %s degraded: %d failed frames in a row", frame.stream, state.consecutive_failures)
