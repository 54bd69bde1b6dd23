"""Counters, latency histograms and gauges, rendered for Prometheus and the log.

Everything is keyed by a metric name and a few labels (stage, stream), whose
values come from the graph, so the number of series is fixed by the graph and
memory stays bounded. The pipeline declares every series it can emit at zero
before the first frame, so a counter exists (at 0) before its first increment.
Latencies go both into a Prometheus histogram (cumulative, aggregatable across
daemons) and into a short window of recent values from which the log line, the
summary and /health read p50/p95.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

# Upper bounds of the latency histograms' buckets, seconds. Measured per-batch stage times
# run from 0.05 ms (tracker, smoother) through 1.5-12 ms (OpenVINO models) and end-to-end
# latencies from 40 ms to 0.3 s on a loaded machine (docs/performance.md); 10 s is far beyond
# any real-time graph, so a stall still lands in a finite bucket.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Recent latencies kept per series for p50/p95: 1024 floats is about 40 s of a 25 fps stream.
LATENCY_WINDOW = 1024

Labels = tuple[tuple[str, str], ...]

# name -> help text; every metric the runtime and stages emit is listed here.
COUNTERS = {
    "frames": "Frames a stage finished (processed, failed or discarded), by stage and stream.",
    "frames_captured": "Frames decoded by the source, by stream; its rate is the stream's frame rate.",
    "drops": "Live frames dropped at the graph's entrance, unconverted: the stream had too many frames in "
             "flight, or was being thinned to an even share of its frames (admit_every).",
    "sink_drops": "Live frames a sink skipped because its own queue was full (the sink fell behind; the pose "
                  "path went on without waiting for it), by stage and stream.",
    "errors": "Frames (or stream events, or the closing) on which a stage raised, by stage and stream.",
    "reconnects": "Times a live source reopened its stream after losing it.",
    "decode_errors": "Corrupt or undecodable packets skipped, by stream.",
    "packets_dropped": "Compressed packets a stream read by a copying recorder (encode: copy) shed before any "
                       "frame entered to carry them (its frames were dropped at the entrance for that long), by "
                       "stream: a gap in its recording up to the next keyframe.",
    "published": "ZeroMQ messages sent by the publishers, by topic kind (pose, event, status).",
    "events": "Events raised by plugins, by event kind and stream.",
    "batches": "Batches a stage processed, by stage; frames / batches is its mean batch size.",
    "mqtt_published": "Messages an mqtt stage handed to its client, by stage and topic kind (event, status, "
                      "pose, state, discovery, availability).",
    "mqtt_dropped": "Messages an mqtt stage dropped because its queue was full (broker away too long), by stage "
                    "and topic kind.",
    "webhook_requests": "Webhook requests, by stage and result: delivered, failed (one attempt: a connection "
                        "error, a timeout, a bad status), given_up (after every retry), dropped (queue full).",
    "live_frames": "Frames the live view encoded, by stream (only while someone watches).",
}
HISTOGRAMS = {
    "stage_latency": "Seconds a stage spent on one batch, by stage.",
    "stage_frame_latency": "Seconds a stage spent per frame of a batch (the batch's time / its frames), by stage: a "
                           "stall (a compile, an allocation) shows here whatever the batch size.",
    "e2e_latency": "Seconds from a frame's capture to the end of the processor chain (its poses and events are "
                   "ready; sinks then write them), by stream.",
    "batch_wait": "Seconds a stage waited for its batch to fill after taking the batch's first frame, by stage.",
    "webhook_latency": "Seconds from an event's capture to its webhook's successful answer, by stage.",
    "mqtt_latency": "Seconds from an event's capture to the broker's acknowledgement of its message, by stage.",
}
GAUGES = {
    "queue_depth": "Frames and stream events waiting in a stage's input queue, by stage (a light stage run in "
                   "the thread of the stage feeding it has none).",
    "admit_every": "1 / the share of a live stream's frames let into the graph, evenly spaced (1: every frame "
                   "that finds a free slot; 2.5: two in five, under sustained overload, runtime.even_drops), by "
                   "stream.",
    "clip_buffer_bytes": "Bytes of JPEG frames held in a clips stage's ring buffer, by stage and stream.",
    "clip_buffer_seconds": "Seconds of video held in a clips stage's ring buffer, by stage and stream.",
    "mqtt_connected": "1 while an mqtt stage is connected to its broker, by stage.",
    "mqtt_queued": "QoS 1 messages an mqtt stage holds until the broker acknowledges them, by stage.",
    "webhook_queue": "Events waiting in a webhook stage's queue, by stage.",
    "live_watchers": "Browsers watching a stream's live video, by stream.",
    "sink_paused": "1 while a sink has stopped writing a stream after a storage error (a full disk), by stage "
                   "and stream; it retries with backoff.",
}


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


class _Latency:
    """One latency series: histogram bucket counts since start, and the recent values."""

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.recent: deque[tuple[float, float]] = deque(maxlen=LATENCY_WINDOW)  # (monotonic time, seconds)

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds
        self.recent.append((time.monotonic(), seconds))


class Metrics:
    """Thread-safe store of the graph's metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, Labels], int] = defaultdict(int)
        self._latencies: dict[tuple[str, Labels], _Latency] = {}
        self._gauges: dict[tuple[str, Labels], Callable[[], float]] = {}

    def declare(self, name: str, **labels: str) -> None:
        """Create a counter or latency series at zero, so it is exported before its first event."""
        assert name in COUNTERS or name in HISTOGRAMS, name
        with self._lock:
            if name in COUNTERS:
                self._counters[name, _key(labels)] += 0
            else:
                self._latencies.setdefault((name, _key(labels)), _Latency())

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        assert name in COUNTERS, name
        with self._lock:
            self._counters[name, _key(labels)] += n

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        assert name in HISTOGRAMS, name
        key = (name, _key(labels))
        with self._lock:
            series = self._latencies.get(key)
            if series is None:
                series = self._latencies[key] = _Latency()
            series.observe(seconds)

    def gauge(self, name: str, read: Callable[[], float], **labels: str) -> None:
        """Register a gauge read at scrape time (e.g. a queue's depth)."""
        assert name in GAUGES, name
        with self._lock:
            self._gauges[name, _key(labels)] = read

    def count(self, name: str, **labels: str) -> int:
        """A counter's value; labels left out are summed over."""
        wanted = set(labels.items())
        with self._lock:
            return sum(v for (n, key), v in self._counters.items() if n == name and wanted <= set(key))

    def count_by(self, name: str, label: str, **labels: str) -> dict[str, int]:
        """A counter's values by one label's value (e.g. events by kind), for the other labels given."""
        wanted = set(labels.items())
        totals: dict[str, int] = defaultdict(int)
        with self._lock:
            for (n, key), value in self._counters.items():
                if n == name and wanted <= set(key):
                    totals[dict(key)[label]] += value
        return dict(totals)

    def quantiles(self, name: str, since_s: float | None = None, percents: tuple[float, ...] = (50, 95),
                  **labels: str) -> tuple[float, ...] | None:
        """The `percents` percentiles (p50, p95 unless told) in seconds of the recent values (of
        the last `since_s` seconds if given), or None if there are none."""
        oldest = -np.inf if since_s is None else time.monotonic() - since_s
        with self._lock:
            series = self._latencies.get((name, _key(labels)))
            values = [v for t, v in series.recent if t >= oldest] if series else []
        if not values:
            return None
        return tuple(float(v) for v in np.percentile(values, percents))

    def collect(self):
        """prometheus_client collector protocol."""
        with self._lock:
            counters = dict(self._counters)
            latencies = {key: (list(s.buckets), s.sum) for key, s in self._latencies.items()}
            gauges = dict(self._gauges)
        for name, help_text in COUNTERS.items():
            series = {k: v for (n, k), v in counters.items() if n == name}
            if series:
                family = CounterMetricFamily(f"streampose_{name}", help_text, labels=_label_names(series))
                for key, value in series.items():
                    family.add_metric([v for _, v in key], value)
                yield family
        for name, help_text in HISTOGRAMS.items():
            series = {k: v for (n, k), v in latencies.items() if n == name}
            if series:
                family = HistogramMetricFamily(f"streampose_{name}_seconds", help_text, labels=_label_names(series))
                for key, (counts, total) in series.items():
                    cumulative = np.cumsum(counts).tolist()
                    bounds = [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]
                    family.add_metric([v for _, v in key], list(zip(bounds, cumulative)), total)
                yield family
        for name, help_text in GAUGES.items():
            series = {k: read() for (n, k), read in gauges.items() if n == name}
            if series:
                family = GaugeMetricFamily(f"streampose_{name}", help_text, labels=_label_names(series))
                for key, value in series.items():
                    family.add_metric([v for _, v in key], value)
                yield family


def _label_names(series: dict[Labels, object]) -> list[str]:
    first = next(iter(series))
    return [k for k, _ in first]
