"""The stage interface: what every box in a graph implements.

The runtime runs each stage in one thread (its own, or, for a light stage, the thread of the
stage feeding it: runtime/runner.py) and calls, in each stream's order:

- `run(frames)` for a batch (one frame unless the stage's `batch` parameters allow more;
  frames of several streams may share a batch, each stream's frames in order): it calls the
  stage's `process`, which fills the frames in place, inside a transaction of the stage's
  state stores (runtime/state.py). A batch that raises is retried frame by frame; a frame
  that still raises is logged, counted and passed on without the stage's results.
- `stream_event(event)` when a stream opens, is lost or ends: the stores reset, then the
  stage's `on_stream_event`.
- `on_events(stream, events)` for events that ride on no frame (a plugin's last events at a
  stream gap or at shutdown). Events raised on a frame are in `frame.events`, read in `process`.
- `finish()` when the graph stops: the stores drop their states, then the stage's `close`.

Events a stage raises outside a frame go out with `emit(stream, events)`; the runtime passes
them to every stage downstream (`on_events`) before the frames and stream events that follow.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from streampose.frame import Event, Frame, StreamEvent
from streampose.runtime.metrics import Metrics
from streampose.runtime.state import StreamStates


@dataclass
class StageContext:
    """What a stage may need from the world around it.

    graph_dir:   folder of the graph file; relative paths in parameters resolve here.
    output_dir:  where sinks write (recordings, jsonl); paths are confined to it.
    model_paths: folders searched for models named by name, in order.
    streams:     ids of the streams that reach this stage.
    metrics:     the graph's metrics, for stage-specific counters.
    threads:     CPU inference threads the graph's core plan gives this stage (runtime.cores);
                 0 = the stage's `threads` parameter alone decides.
    parallel_runs: engine runs the core plan lets this stage have going at once (run_parallel).
    engine_cache: root of the engines' on-disk caches (runtime.engine_cache_dir); None = the default.
    """

    graph_dir: Path
    output_dir: Path
    model_paths: list[Path] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    threads: int = 0
    parallel_runs: int = 1
    engine_cache: Path | None = None


class Stage:
    """Base class of all stages. Subclasses override `process`; their parameters are the graph
    schema class that names them (graph/schema.py, IMPLEMENTATION)."""

    def __init__(self, stage_id: str, params: BaseModel, context: StageContext):
        self.id = stage_id
        self.params = params
        self.context = context
        self.log = logging.getLogger(f"streampose.stage.{stage_id}")
        batch = getattr(params, "batch", None)
        # Only a stage whose batches can hold several frames has them retried frame by frame.
        self.batched = batch is not None and batch.max_size > 1
        self.stores: list[StreamStates] = []
        self.outbox: list[tuple[str, list[Event]]] = []  # emitted, not yet sent downstream

    # ------------------------------------------------------------------ state

    def per_stream(self, factory, on_drop=None) -> StreamStates:
        """A store of one state per stream (runtime/state.py), made by `factory()`."""
        return self.per_track(factory, capacity=1, on_drop=on_drop)

    def per_track(self, factory, capacity: int, on_drop=None) -> StreamStates:
        """A store of one state per (stream, track id), at most `capacity` per stream."""
        store = StreamStates(factory, capacity, self.log, on_drop)
        self.stores.append(store)
        return store

    def emit(self, stream: str, events: list[Event]) -> None:
        """Send `events`, raised outside any frame, to the stages downstream."""
        if events:
            self.outbox.append((stream, list(events)))

    # ------------------------------------------------------------------ what the runtime calls

    def run(self, frames: list[Frame]) -> None:
        """`process` with the stores in a transaction: a batch that raises leaves them as they were."""
        undo, emitted = self.batched and len(frames) > 1, len(self.outbox)
        for store in self.stores:
            store.begin(undo)
        try:
            self.process(frames)
            for store in self.stores:
                store.end_frames(frames)
        except BaseException:
            for store in self.stores:
                store.rollback()
            if undo:  # the retry emits them again
                del self.outbox[emitted:]
            raise
        for store in self.stores:
            store.commit()

    def stream_event(self, event: StreamEvent) -> None:
        for store in self.stores:
            store.on_stream_event(event)
        self.on_stream_event(event)

    def finish(self) -> None:
        for store in self.stores:
            store.close()
        self.close()

    def load_model(self, max_batch: int, batch_sizes: Iterable[int] | None = None):
        """(ModelFolder, Engine) of a network-running stage's `model`, `engine`, `device`...
        keys (schema.ModelStage): a name is looked up on the model search path, a relative
        path is taken from the graph file's folder. `batch_sizes` are the batch sizes the stage
        will run (default every size 1..max_batch): all are made ready (compiled) here, before
        the first frame, so no frame waits for a compile."""
        from streampose.engines import load_engine
        from streampose.models.folder import default_search_path, find_model

        p, context = self.params, self.context
        folder = find_model(p.model, context.model_paths or default_search_path(), context.graph_dir)
        engine = load_engine(folder, engine=p.engine, device=p.device, precision=p.precision,
                             threads=context.threads or p.threads, fallback=p.fallback, max_batch=max_batch,
                             cache_dir=context.engine_cache, parallel=context.parallel_runs)
        try:
            engine.prepare(range(1, max_batch + 1) if batch_sizes is None else batch_sizes)
        except Exception:
            engine.close()
            raise
        return folder, engine

    def process(self, frames: list[Frame]) -> None:
        """Fill in `frames` (a batch, in arrival order). Must not keep them."""
        raise NotImplementedError

    def on_stream_event(self, event: StreamEvent) -> None:
        """A stream opened, had a gap or ended (its stores have reset already)."""

    def on_events(self, stream: str, events: list[Event]) -> None:
        """Events of `stream` that ride on no frame (a sink publishes, logs or draws them)."""

    def paused_reason(self, stream: str) -> str | None:
        """Why this stage has stopped doing its work for `stream` for now (a sink whose disk is
        full, say), for /health; None while it works."""
        return None

    def close(self) -> None:
        """The graph is stopping: flush and release everything."""


def stage_class(params: BaseModel) -> type[Stage]:
    """The Stage class a stage's parameters name (graph/schema.py: IMPLEMENTATION), imported now."""
    module, _, name = params.IMPLEMENTATION.partition(":")
    return getattr(importlib.import_module(module), name)
