"""Is the daemon alive, is it ready, and are its streams well: /livez, /readyz and /health.

Three questions for three readers (docs/operations.md):

- liveness (/livez, for a supervisor that restarts the process): every thread that should
  run does, and no stage is stuck in one batch. A lost camera is no reason to restart: the
  source reconnects by itself, and a restart would interrupt every other stream.
- readiness (/readyz, for whoever waits for the daemon): models loaded, graph started, every
  source past its first opening attempt; not while stopping.
- health (/health, for people and dashboards): each stream's state, `overloaded` included,
  and one overall state; its code turns 503 whenever something needs a look.

Each answers (ok, JSON body); `pipeline` is None while the graph is still being built.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streampose.runtime.pipeline import Pipeline

# Fewer frames than this in the window give no verdict on overload: a stream that just opened,
# or a 1 fps camera over a short window, would flip on one dropped or slow frame.
MIN_FRAMES = 10


class StreamLoad:
    """A live stream's frames at the graph's entrance, admitted or dropped, counted in
    one-second buckets over the recent window: memory is window_s + 2 buckets at any rate."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._buckets: deque[list[int]] = deque()  # [second, frames, dropped], oldest first
        self._lock = threading.Lock()

    def record(self, dropped: bool) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._buckets or self._buckets[-1][0] != int(now):
                self._buckets.append([int(now), 0, 0])
                self._trim(now)
            bucket = self._buckets[-1]
            bucket[1] += 1
            bucket[2] += dropped

    def recent(self) -> tuple[int, int]:
        """(frames, dropped) over the window."""
        with self._lock:
            self._trim(time.monotonic())
            return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def _trim(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] + 1 <= now - self.window_s:
            self._buckets.popleft()


def overload(pipeline: Pipeline, stream: str) -> str | None:
    """Why a live stream is overloaded over the recent window, or None if it is not."""
    params = pipeline.graph.spec.runtime.health
    load = pipeline.loads.get(stream)
    if load is None:
        return None
    frames, dropped = load.recent()
    if frames < MIN_FRAMES:
        return None
    if dropped > params.max_drop_share * frames:
        return (f"dropped {dropped} of {frames} frames in the last {params.window_s:g} s "
                f"(runtime.health.max_drop_share {params.max_drop_share:g})")
    if params.max_latency_s is not None:
        latency = pipeline.metrics.quantiles("e2e_latency", since_s=params.window_s, stream=stream)
        if latency and latency[1] > params.max_latency_s:
            return (f"end-to-end p95 {latency[1]:.2f} s over the last {params.window_s:g} s "
                    f"(runtime.health.max_latency_s {params.max_latency_s:g})")
    return None


def stream_state(pipeline: Pipeline, stream: str) -> tuple[str, str | None]:
    """(state, reason): the stream's own state, or `overloaded` (with why) for a running live
    stream that cannot keep up."""
    state = pipeline.streams[stream].state
    reason = overload(pipeline, stream) if state == "running" else None
    return ("overloaded", reason) if reason else (state, None)


def _problems(pipeline: Pipeline) -> list[str]:
    """What makes the process not alive: dead threads, a stage stuck in one batch."""
    if pipeline.lifecycle == "starting":
        return []
    problems = []
    stuck_after = pipeline.graph.spec.runtime.health.stuck_after_s
    now = time.monotonic()
    for stage_id, runner in pipeline.runners.items():
        if not runner.thread.is_alive() and not runner.done:
            problems.append(f"stage {stage_id}: its thread died")
        busy_since = runner.busy_since
        if busy_since is not None and now - busy_since > stuck_after:
            problems.append(f"stage {stage_id}: busy with one batch for {now - busy_since:.0f} s "
                            f"(runtime.health.stuck_after_s {stuck_after:g})")
    if pipeline.lifecycle != "stopping":  # stopped sources end their threads without an `ended`
        for stream, thread in pipeline.source_threads.items():
            if not thread.is_alive() and pipeline.streams[stream].state not in ("ended", "failed"):
                problems.append(f"source {stream}: its thread died")
    return problems


def liveness(pipeline: Pipeline | None) -> tuple[bool, dict]:
    """/livez: 200 while the process works (also while starting and stopping), 503 with the
    problems when a thread died or a stage is stuck: a restart is the fix."""
    problems = [] if pipeline is None else _problems(pipeline)
    return not problems, {"state": "dead" if problems else "alive", "problems": problems}


def readiness(pipeline: Pipeline | None) -> tuple[bool, dict]:
    """/readyz: 200 once the graph runs and every source has been opened or tried once;
    503 `starting` before, 503 `stopping` after a stop. Camera outages do not change it."""
    if pipeline is None:
        return False, {"state": "starting", "detail": "building the graph (loading models)"}
    if pipeline.lifecycle == "starting":
        return False, {"state": "starting", "detail": "graph built, not started"}
    if pipeline.lifecycle == "stopping":
        return False, {"state": "stopping", "detail": "draining the frames in flight"}
    connecting = [sid for sid, s in pipeline.streams.items() if s.state == "connecting"]
    if connecting:
        return False, {"state": "starting", "detail": f"opening sources: {', '.join(connecting)}"}
    return True, {"state": "ready"}


def report(pipeline: Pipeline | None) -> tuple[bool, dict]:
    """/health: the overall state and every stream's. 200 while `starting` or `running`, 503
    while `degraded` (a stream reconnecting, degraded, overloaded or failed, or a sink paused
    for a stream), `stopping` or `failed` (not alive, see /livez)."""
    if pipeline is None:
        return True, {"state": "starting", "detail": "building the graph (loading models)", "streams": {}}
    problems = _problems(pipeline)
    ready, _ = readiness(pipeline)
    metrics = pipeline.metrics
    streams = {}
    for sid, stream in pipeline.streams.items():
        state, reason = stream_state(pipeline, sid)
        streams[sid] = {"state": state, "detail": stream.detail,
                        "frames": metrics.count("frames_captured", stream=sid),
                        "drops": metrics.count("drops", stream=sid),
                        "reconnects": metrics.count("reconnects", stream=sid),
                        "decode_errors": metrics.count("decode_errors", stream=sid),
                        "admit_every": round(pipeline.admissions[sid].every, 2)}
        if reason:
            streams[sid]["reason"] = reason
        sink_drops = metrics.count_by("sink_drops", "stage", stream=sid)
        sink_drops = {stage_id: n for stage_id, n in sink_drops.items() if n}
        if sink_drops:
            streams[sid]["sink_drops"] = sink_drops  # stage id -> live frames it skipped, falling behind
        paused = {stage_id: why for stage_id, runner in pipeline.runners.items()
                  if (why := runner.stage.paused_reason(sid))}
        if paused:
            streams[sid]["paused"] = paused  # stage id -> why, e.g. a recorder on a full disk
    states = {s["state"] for s in streams.values()}
    if pipeline.lifecycle == "stopping":
        overall = "stopping"
    elif problems:
        overall = "failed"
    elif not ready:
        overall = "starting"
    elif states & {"reconnecting", "degraded", "overloaded", "failed"} or any("paused" in s for s in streams.values()):
        overall = "degraded"
    else:
        overall = "running"
    return overall in ("starting", "running"), {"state": overall, "graph": str(pipeline.graph.path),
                                                "problems": problems, "streams": streams}
