"""The stage interface: what every box in a graph implements.

The runtime gives each stage its own thread. It hands `process` a batch of
frames (one frame unless the stage's `batch` parameters allow more; frames of
several streams may share a batch, each stream's frames in order). The stage
fills the frames in place; the runtime then passes them downstream. A stage that
raises is logged and counted, and its frames go on without its results.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from streampose.frame import Frame, StreamEvent
from streampose.runtime.metrics import Metrics


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
    engine_cache: root of the engines' on-disk caches (runtime.engine_cache_dir); None = the default.
    """

    graph_dir: Path
    output_dir: Path
    model_paths: list[Path] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    threads: int = 0
    engine_cache: Path | None = None


class Stage:
    """Base class of all stages. Subclasses set `Params` and override `process`."""

    Params: type[BaseModel]

    def __init__(self, stage_id: str, params: BaseModel, context: StageContext):
        self.id = stage_id
        self.params = params
        self.context = context
        self.log = logging.getLogger(f"streampose.stage.{stage_id}")

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
                             cache_dir=context.engine_cache)
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
        """A stream had a gap or ended; stages with per-stream state reset it."""

    def paused_reason(self, stream: str) -> str | None:
        """Why this stage has stopped doing its work for `stream` for now (a sink whose disk is
        full, say), for /health; None while it works."""
        return None

    def close(self) -> None:
        """The graph is stopping: flush and release everything."""
