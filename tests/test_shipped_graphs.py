"""Every graph in graphs/ runs as shipped, on the shared media and models, with no manual step;
two run at once when their ports are moved with --set."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MODELS, REPO
from streampose.client import PoseMessage, Subscriber
from streampose.graph.loader import load_graph
from streampose.models.folder import default_search_path
from streampose.runtime.pipeline import Pipeline

GRAPHS = sorted((REPO / "graphs").glob("*.yml"))
FRAMES_PER_STREAM = 8
DEADLINE_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def publisher_ids(path: Path) -> list[str]:
    return [s.id for s in load_graph(path).spec.stages if s.type == "publisher"]


@pytest.mark.parametrize("path", GRAPHS, ids=[p.stem for p in GRAPHS])
def test_shipped_graph_runs_every_stream(path, tmp_path):
    # Only the ports and the output folder move; sources, models (the lifter of rtsp_fall.yml
    # from the package itself) and every stage are the graph's own.
    overrides = [f"stages.{sid}.bind=tcp://127.0.0.1:*" for sid in publisher_ids(path)]
    overrides += ["runtime.metrics.bind=null", f"runtime.output_dir={tmp_path}"]
    graph = load_graph(path, overrides)
    pipeline = Pipeline(graph, model_paths=default_search_path([MODELS]), output_dir=tmp_path)
    leaves = [sid for sid in graph.inputs if not any(sid in inputs for inputs in graph.inputs.values())]
    streams = [s.id for s in graph.spec.sources]

    def slowest() -> int:
        return min(pipeline.metrics.count("frames", stage=leaf, stream=s) for leaf in leaves for s in streams)

    pipeline.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while slowest() < FRAMES_PER_STREAM and time.monotonic() < deadline and not pipeline.wait(timeout=0.2):
            pass
    finally:
        pipeline.stop()
        assert pipeline.shutdown()
    assert slowest() >= FRAMES_PER_STREAM, {s: pipeline.metrics.count("frames", stream=s) for s in streams}
    assert sum(pipeline.metrics.count("errors", stream=s) for s in streams) == 0


def test_two_shipped_graphs_run_at_once_with_their_ports_moved(tmp_path):
    runs = []
    for name in ("rtsp_fall", "fitness"):
        path = REPO / "graphs" / f"{name}.yml"
        publish, metrics = free_port(), free_port()
        sets = [f"stages.{publisher_ids(path)[0]}.bind=tcp://127.0.0.1:{publish}",
                f"runtime.metrics.bind=127.0.0.1:{metrics}", f"runtime.output_dir={tmp_path / name}"]
        command = [sys.executable, str(REPO / "run_pipeline.py"), str(path), "--models", str(MODELS)]
        for assignment in sets:
            command += ["--set", assignment]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"))
        runs.append((process, Subscriber(f"tcp://127.0.0.1:{publish}", topics=("pose/",))))
    try:
        for process, subscriber in runs:
            deadline, message = time.monotonic() + DEADLINE_S, None
            while not isinstance(message, PoseMessage) and time.monotonic() < deadline and process.poll() is None:
                message = subscriber.recv(0.5)
            assert isinstance(message, PoseMessage), process.args
        for process, _ in runs:
            process.send_signal(signal.SIGTERM)
        outputs = [process.communicate(timeout=60)[0].decode() for process, _ in runs]
    finally:
        for process, subscriber in runs:
            process.kill()
            subscriber.close()
    for (process, _), output in zip(runs, outputs):
        assert process.returncode == 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
