"""The outputs' cost and speed on graphs/live_alarms.yml (two realtime, looping videos):

    STREAMPOSE_MODELS=../shared/models .venv/bin/python benchmarks/outputs.py [--phase-s 20]

(1) the live view's glass-to-glass latency: capture of a frame to its display in a real headless
    chromium page (the page records Date.now() - capture_time when each JPEG has loaded);
(2) the daemon's extra CPU per watched stream: its process CPU over a phase with no page open,
    then one page (both streams watched), then two pages (the same frames, encoded once, sent twice);
(3) alarm delivery time: an alarm's capture to its arrival at an MQTT subscriber (through a real
    mosquitto) and to a webhook receiver's answer (a local HTTP server).
Needs mosquitto, chromium and chromium-driver (`make test-deps`). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from mosquitto import Mosquitto, Subscriber, wait_for  # noqa: E402
from test_live_view import CHROMEDRIVER, CHROMIUM, FLAGS  # noqa: E402

from streampose.graph.loader import load_graph  # noqa: E402
from streampose.models.folder import default_search_path  # noqa: E402
from streampose.runtime.monitor import MonitorServer  # noqa: E402
from streampose.runtime.pipeline import Pipeline  # noqa: E402
from streampose.web.app import LiveView  # noqa: E402

ALARMS = ("fall_confirmed", "person_down")
LIVE_THREADS = ("stage-live", "monitor")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def thread_cpu_seconds(names: tuple[str, ...]) -> float:
    """CPU seconds of this process's threads with these names (Linux /proc): the live stage's, which
    draws and encodes, and the web server's, which sends. The process total on a loaded machine
    mostly shows what inference lost to the other processes."""
    total = 0.0
    for thread in threading.enumerate():
        if thread.name in names and thread.native_id:
            fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    return f"{statistics.median(values):.0f} / {p95:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-s", type=float, default=20.0, help="seconds per CPU phase")
    args = parser.parse_args()
    received: list[tuple[float, bytes]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((time.time(), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as folder, Mosquitto(Path(folder) / "broker") as broker:
        subscriber_times: list[tuple[float, dict]] = []
        subscriber = Subscriber(broker.port, topics=("streampose/+/event",))
        subscriber.client.on_message = lambda _c, _u, m: subscriber_times.append((time.time(), json.loads(m.payload)))
        wait_for(subscriber.subscribed.is_set, 10, "the subscription")
        graph = load_graph(REPO / "graphs" / "live_alarms.yml", [
            f"stages.mqtt.port={broker.port}", f"stages.hook.url=http://127.0.0.1:{hook.server_address[1]}/hook",
            "runtime.metrics.bind=127.0.0.1:0", "runtime.metrics.log_interval_s=0"])
        monitor = MonitorServer("127.0.0.1:0", LiveView(lambda: monitor.pipeline, None).routes())
        monitor.start()
        pipeline = Pipeline(graph, model_paths=default_search_path(), output_dir=Path(folder) / "out")
        monitor.attach(pipeline)
        pipeline.start()
        streams = list(pipeline.streams)
        time.sleep(5)  # past start-up: models warm, streams running
        rows, pages, cpu = [], [], {}
        for watchers in (0, 1, 2):
            while len(pages) < watchers:
                page = browser()
                page.get(f"http://{monitor.address}/")
                wait_for(lambda: page.execute_script("return Object.keys(window.streamposeLatency).length") == 2,
                         30, "frames on the page")
                pages.append(page)
            for page in pages:
                page.execute_script("for (const k in window.streamposeLatency) window.streamposeLatency[k] = []")
            start_cpu, start_live, start = cpu_seconds(), thread_cpu_seconds(LIVE_THREADS), time.monotonic()
            time.sleep(args.phase_s)  # a measuring window, not a wait for an event
            elapsed = time.monotonic() - start
            cpu[watchers] = ((cpu_seconds() - start_cpu) / elapsed,
                             (thread_cpu_seconds(LIVE_THREADS) - start_live) / elapsed)
            if pages:
                latencies = pages[0].execute_script("return window.streamposeLatency")
                rows.append((watchers, {s: latencies[s] for s in streams}))
        for page in pages:
            page.quit()
        pipeline.stop()
        pipeline.shutdown()
        monitor.close()
        subscriber.close()
        hook.shutdown()
    mqtt = [t - m["capture_time"] for t, m in subscriber_times if m["kind"] in ALARMS]
    webhook = [t - json.loads(b)["capture_time"] for t, b in received if json.loads(b)["kind"] in ALARMS]
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\nuptime: {load}\n")
    print("| measure | value |\n|---|---|")
    for watchers, latencies in rows:
        for stream, values in latencies.items():
            print(f"| live view glass-to-glass, {stream}, {watchers} page(s), median / p95 ms | "
                  f"{percentiles([v for v in values])} ({len(values)} frames) |")
    for watchers in (0, 1, 2):
        print(f"| daemon CPU with {watchers} page(s) open: whole process / live stage + web server threads | "
              f"{cpu[watchers][0] * 100:.0f}% / {cpu[watchers][1] * 100:.1f}% of a core |")
    print(f"| extra CPU per watched stream, first page (live + web threads) | "
          f"{(cpu[1][1] - cpu[0][1]) * 100 / len(streams):.1f}% of a core |")
    print(f"| extra CPU per watched stream, second page | {(cpu[2][1] - cpu[1][1]) * 100 / len(streams):.1f}% "
          f"of a core |")
    if mqtt:
        print(f"| alarm capture -> MQTT subscriber, median / max ms | {statistics.median(mqtt) * 1e3:.0f} / "
              f"{max(mqtt) * 1e3:.0f} ({len(mqtt)} alarms) |")
    if webhook:
        print(f"| alarm capture -> webhook receiver, median / max ms | {statistics.median(webhook) * 1e3:.0f} / "
              f"{max(webhook) * 1e3:.0f} ({len(webhook)} alarms) |")


if __name__ == "__main__":
    main()
