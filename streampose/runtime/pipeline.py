"""A running graph: source threads feed stage threads through bounded queues. A light stage
(schema.LightStage) fed by one stage runs in that stage's thread instead (StageRunner.host).

Flow control happens once, at the entrance: each stream may have at most
`runtime.in_flight` frames inside the graph. A live stream's frame that finds no
free slot is dropped there and counted, so the freshest frames get in and no
backlog builds; a file stream's frame waits for a slot, so every frame is
processed. A frame's slot is freed when the last stage that changes frames (the end
of the processor chain) is done with it: sinks (recorders, clips, sockets, the live
view) read frames from their own bounded queues (SinkInbox), so a slow disk or
encoder never holds a frame's slot. The source asks before converting a frame
(runtime.admission), so a dropped frame costs only its decoding, and an overloaded
live stream is let in at an even rate.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2

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
        self.limit = limit
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


class SinkInbox(queue.Queue):
    """A sink's queue. A live stream's frame that finds it full is dropped there and counted
    (`sink_drops`): the sink falls behind, the pose path does not wait for it. A file stream's
    frame waits for room, so a recording of a file has every frame; events and the end of a
    stream always wait (they are few and must not be lost)."""

    def __init__(self, maxsize: int, stage_id: str, live_streams: set[str], metrics: Metrics):
        super().__init__(maxsize)
        self.stage_id = stage_id
        self.live_streams = live_streams
        self.metrics = metrics

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        if isinstance(item, Frame) and item.stream in self.live_streams:
            try:
                super().put(item, block=False)
            except queue.Full:
                self.metrics.inc("sink_drops", stage=self.stage_id, stream=item.stream)
            return
        super().put(item, block, timeout)


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

        downstream: dict[str, list[str]] = {name: [] for name in [s.id for s in spec.sources] + list(graph.inputs)}
        for stage_id, inputs in graph.inputs.items():
            for name in inputs:
                downstream[name].append(stage_id)
        roles = {st.id: st.ROLE for st in spec.stages}
        # The loader lets each stream through one chain of processors with sinks branching off its
        # end, so a frame leaves exactly one chain end; a source feeding only sinks is its own.
        processing_ends = {name for name in downstream
                           if roles.get(name, "processor") == "processor"
                           and not any(roles[child] == "processor" for child in downstream[name])}
        self._declare_metrics()

        self.cores = plan_cores(spec)
        cv2.setNumThreads(self.cores.opencv_threads)  # process-wide: OpenCV has no per-call setting
        engine_cache = Path(spec.runtime.engine_cache_dir).resolve() if spec.runtime.engine_cache_dir else None
        # Frames carry their compressed packets only to the streams a copying recorder reads.
        copied = {sid for st in spec.stages if st.type == "recorder" and st.encode == "copy"
                  for sid in self._streams_reaching(st.id)}
        self.captures = {s.id: Capture(s, graph.path.parent, lambda name, sid=s.id: self.metrics.inc(name, stream=sid),
                                       decoder_threads=self.cores.decoder_threads,
                                       on_packets_shed=(lambda n, sid=s.id: self.metrics.inc("packets_dropped", n,
                                                                                              stream=sid))
                                       if s.id in copied else None)
                         for s in spec.sources}
        for sid in copied:
            self.metrics.declare("packets_dropped", stream=sid)
        self.gates = {sid: EntranceGate(spec.runtime.in_flight_for(cap.live), cap.live)
                      for sid, cap in self.captures.items()}
        self.loads = {sid: StreamLoad(spec.runtime.health.window_s) for sid, cap in self.captures.items() if cap.live}
        self.admissions = {sid: Admission(sid, cap.live, spec.runtime.even_drops, self.gates[sid].admit,
                                          self.loads[sid].record if sid in self.loads else None,
                                          self.metrics, self._stop)
                           for sid, cap in self.captures.items()}
        live = {sid for sid, cap in self.captures.items() if cap.live}
        hosts = self._hosts()
        self.inboxes = {st.id: SinkInbox(spec.runtime.queue_size, st.id, live, self.metrics) if st.ROLE == "sink"
                        else queue.Queue(spec.runtime.queue_size) for st in spec.stages if st.id not in hosts}
        self.runners: dict[str, StageRunner] = {}
        for st in spec.stages:
            context = StageContext(graph_dir=graph.path.parent, output_dir=self.output_dir,
                                   model_paths=list(model_paths or []),
                                   streams=self._streams_reaching(st.id), metrics=self.metrics,
                                   threads=self.cores.engine_threads.get(st.id, 0),
                                   parallel_runs=self.cores.parallel_runs.get(st.id, 1), engine_cache=engine_cache)
            try:
                stage = stage_module.stage_class(st)(st.id, st, context)
            except Exception as error:
                raise StageBuildError(f"stage '{st.id}' ({st.type}): {error}") from error
            self.runners[st.id] = StageRunner(stage, self.inboxes.get(st.id), upstreams=len(graph.inputs[st.id]),
                                              metrics=self.metrics,
                                              on_processed=self._on_processed if st.id in processing_ends else None)
            if st.id in self.inboxes:
                self.metrics.gauge("queue_depth", self.inboxes[st.id].qsize, stage=st.id)
        for stage_id, host_id in hosts.items():
            self.runners[stage_id].host = self.runners[host_id]
        for stage_id, runner in self.runners.items():
            runner.outboxes = [self.inboxes[d] if d in self.inboxes else self.runners[d] for d in downstream[stage_id]]
        self._source_outboxes = {sid: [self.inboxes[d] for d in downstream[sid]] for sid in self.captures}
        self._processed_at_source = {sid for sid in self.captures if sid in processing_ends}
        self.source_threads = {sid: threading.Thread(target=self._pump, args=(sid,), name=f"source-{sid}", daemon=True)
                               for sid in self.captures}

    # ------------------------------------------------------------------ topology

    def _declare_metrics(self) -> None:
        """Every series the graph can emit, at zero, so each exists before its first event."""
        for stream in self.streams:
            for name in ("frames_captured", "drops", "reconnects", "decode_errors", "e2e_latency"):
                self.metrics.declare(name, stream=stream)
        for st in self.graph.spec.stages:
            self.metrics.declare("stage_latency", stage=st.id)
            self.metrics.declare("stage_frame_latency", stage=st.id)
            self.metrics.declare("batch_wait", stage=st.id)
            self.metrics.declare("batches", stage=st.id)
            for stream in self._streams_reaching(st.id):
                self.metrics.declare("frames", stage=st.id, stream=stream)
                self.metrics.declare("errors", stage=st.id, stream=stream)
                if st.ROLE == "sink":
                    self.metrics.declare("sink_drops", stage=st.id, stream=stream)
            if st.type == "publisher":
                for kind in messages.KINDS:
                    self.metrics.declare("published", kind=kind)

    def _hosts(self) -> dict[str, str]:
        """Stage id -> the stage whose thread runs it, for the light stages that need no thread of
        their own (schema.LightStage.own_thread): fed by one stage, one frame at a time."""
        stages = {st.id: st for st in self.graph.spec.stages}
        hosts = {}
        for st in stages.values():
            inputs = self.graph.inputs[st.id]
            batch = getattr(st, "batch", None)
            if (getattr(st, "own_thread", True) or len(inputs) != 1 or inputs[0] not in stages
                    or (batch is not None and batch.max_size > 1)):
                continue
            hosts[st.id] = inputs[0]
        return hosts

    def describe_threads(self) -> str:
        """One entry per stage thread, with the light stages it runs: "detect; pose + track, fall; publish"."""
        guests: dict[str, list[str]] = {}
        for stage_id, runner in self.runners.items():
            host = runner
            while host.host is not None:
                host = host.host
            hosted = guests.setdefault(host.stage.id, [])
            if host is not runner:
                hosted.append(stage_id)
        return "; ".join(f"{stage_id} + {', '.join(hosted)}" if hosted else stage_id
                         for stage_id, hosted in guests.items())

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
        log.info("stage threads: %s", self.describe_threads())

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
        processed = stream in self._processed_at_source
        try:
            for item in capture.frames(self._stop, admit=self.admissions[stream].admit):
                if isinstance(item, StreamEvent):
                    self._on_stream_event(item)
                    for outbox in outboxes:
                        outbox.put(item)
                    continue
                if processed:
                    self._on_processed(item)
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

    def _on_processed(self, frame: Frame) -> None:
        """The frame has left the processor chain: its result is judged (a later stage's success
        must not hide an earlier one's failure; sinks count their own errors and drops), its
        slot is free, and its end-to-end latency is what subscribers of its poses see."""
        now = time.time()
        with self._lock:
            self._record_result(frame, ok=not frame.failed_stages, now=now)
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
