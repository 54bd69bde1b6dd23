"""Counters, latency windows and gauges, rendered for Prometheus and the log.

Everything is keyed by a metric name and a few labels (stage, stream), whose
values come from the graph, so the number of series is fixed by the graph and
memory stays bounded. Latencies keep a sliding window of recent values from
which p50/p95 are read.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Callable

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_WINDOW = 1024

Labels = tuple[tuple[str, str], ...]

# name -> help text; every metric the runtime and stages emit is listed here.
COUNTERS = {
    "frames": "Frames processed, by stage and stream.",
    "frames_captured": "Frames decoded by the source, by stream.",
    "drops": "Frames dropped at the graph's entrance because the stream had too many in flight.",
    "errors": "Frames on which a stage raised, by stage and stream.",
    "reconnects": "Times a source reopened its stream.",
    "decode_errors": "Corrupt or undecodable packets skipped, by stream.",
    "published": "Messages sent by a publisher, by topic kind.",
    "events": "Events raised by plugins, by event kind and stream.",
}
LATENCIES = {
    "stage_latency": "Seconds a stage spent per batch, by stage.",
    "e2e_latency": "Seconds from capture to the end of the graph, by stream.",
}


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


class Metrics:
    """Thread-safe store of the graph's metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, Labels], int] = defaultdict(int)
        self._windows: dict[tuple[str, Labels], deque] = {}
        self._gauges: dict[tuple[str, Labels], Callable[[], float]] = {}

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        assert name in COUNTERS, name
        with self._lock:
            self._counters[name, _key(labels)] += n

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        assert name in LATENCIES, name
        key = (name, _key(labels))
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = deque(maxlen=LATENCY_WINDOW)
            window.append(seconds)

    def gauge(self, name: str, read: Callable[[], float], **labels: str) -> None:
        """Register a gauge read at scrape time (e.g. a queue's depth)."""
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

    def quantiles(self, name: str, **labels: str) -> tuple[float, float] | None:
        """(p50, p95) in seconds of the recent window, or None if empty."""
        with self._lock:
            window = self._windows.get((name, _key(labels)))
            values = np.array(window) if window else None
        if values is None:
            return None
        p50, p95 = np.percentile(values, (50, 95))
        return float(p50), float(p95)

    def snapshot(self) -> dict:
        """Counters and latency quantiles as plain data, for /health and the log."""
        with self._lock:
            counters = {(n, k): v for (n, k), v in self._counters.items()}
            windows = {key: np.array(w) for key, w in self._windows.items() if w}
        latency = {key: tuple(np.percentile(v, (50, 95))) for key, v in windows.items()}
        return {"counters": counters, "latency": latency}

    def collect(self):
        """prometheus_client collector protocol."""
        snap = self.snapshot()
        with self._lock:
            gauges = dict(self._gauges)
        for name, help_text in COUNTERS.items():
            series = {k: v for (n, k), v in snap["counters"].items() if n == name}
            if not series:
                continue
            family = CounterMetricFamily(f"streampose_{name}", help_text, labels=_label_names(series))
            for key, value in series.items():
                family.add_metric([v for _, v in key], value)
            yield family
        for name, help_text in LATENCIES.items():
            series = {k: v for (n, k), v in snap["latency"].items() if n == name}
            if not series:
                continue
            family = GaugeMetricFamily(f"streampose_{name}_seconds", help_text,
                                       labels=_label_names(series) + ["quantile"])
            for key, (p50, p95) in series.items():
                values = [v for _, v in key]
                family.add_metric(values + ["0.5"], p50)
                family.add_metric(values + ["0.95"], p95)
            yield family
        by_name: dict[str, dict] = defaultdict(dict)
        for (name, key), read in gauges.items():
            by_name[name][key] = read()
        for name, series in by_name.items():
            family = GaugeMetricFamily(f"streampose_{name}", name.replace("_", " "), labels=_label_names(series))
            for key, value in series.items():
                family.add_metric([v for _, v in key], value)
            yield family


def _label_names(series: dict[Labels, object]) -> list[str]:
    first = next(iter(series))
    return [k for k, _ in first]
