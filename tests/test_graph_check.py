"""`streampose validate` checks what `run` would meet (models, files, URI schemes, addresses,
output folders) without opening a stream or loading a network; every user error of the
command line is one line on stderr and exit status 2."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from conftest import MODELS, REPO, VIDEOS

import streampose

GRAPH = """\
sources:
  - id: cam1
    uri: clip.mp4
stages:
  - id: detect
    type: detector
    model: picodet_s_192_lcnet_pedestrian_ov
  - id: pose
    type: keypoints
    model: tinypose_128x96_ov
  - id: hands
    type: plugin
    plugin: hand_raised
  - id: publish
    type: publisher
    bind: tcp://127.0.0.1:0
  - id: log
    type: jsonl
runtime:
  output_dir: out
  metrics: {bind: null}
"""

# A graph `run` gets as far as binding the publisher with, without a model.
RUNNABLE = f"""\
sources: [{{id: cam1, uri: {VIDEOS / "squat_side_view.mp4"}}}]
stages:
  - {{id: pass, type: noop}}
  - {{id: publish, type: publisher, bind: "tcp://127.0.0.1:{{port}}"}}
runtime: {{metrics: {{bind: null}}}}
"""

# (case id, command line after `streampose` ({graph}: the graph file), the graph file's
# text or bytes (None: none is written), a part of the one line expected on stderr).
CASES = [
    ("misspelt model", "validate {graph}", GRAPH.replace("tinypose_128x96_ov", "tinypose_128x96_0v"),
     "stage 'pose': key 'model': model 'tinypose_128x96_0v' not found (did you mean 'tinypose_128x96_ov'"),
    ("model of the wrong kind", "validate {graph}",
     GRAPH.replace("picodet_s_192_lcnet_pedestrian_ov", "tinypose_128x96_ov"),
     "stage 'detect': key 'model': model tinypose_128x96_ov is a keypoints model (arch HRNet), not a detector"),
    ("missing video", "validate {graph}", GRAPH.replace("clip.mp4", "clip2.mp4"),
     "source 'cam1': key 'uri': no such file"),
    ("missing image folder", "validate {graph}", GRAPH.replace("clip.mp4", "frames/*.jpg"),
     "source 'cam1': key 'uri': no files match"),
    ("unknown URI scheme", "validate {graph}", GRAPH.replace("clip.mp4", "rtps://127.0.0.1:8554/cam1"),
     "unknown URI scheme 'rtps://' (did you mean 'rtsp://'?)"),
    ("publisher address without a scheme", "validate {graph}", GRAPH.replace("tcp://127.0.0.1:0", "127.0.0.1:5555"),
     "stage 'publish': key 'bind': expected tcp://HOST:PORT or ipc://PATH, got '127.0.0.1:5555' "
     "(did you mean 'tcp://127.0.0.1:5555'?)"),
    ("metrics address with a scheme", "validate {graph}", GRAPH.replace("bind: null", "bind: tcp://127.0.0.1:9100"),
     "runtime: key 'metrics.bind': expected HOST:PORT without a scheme"),
    ("missing CURVE key", "validate {graph}", GRAPH.replace("bind: tcp://127.0.0.1:0", "curve_secret_key: keys/x"),
     "stage 'publish': key 'curve_secret_key': no such file"),
    ("unknown plugin", "validate {graph}", GRAPH.replace("hand_raised", "hand_rised"),
     "stage 'hands': unknown plugin 'hand_rised'"),
    ("bad jsonl path", "validate {graph}", GRAPH.replace("type: jsonl", "type: jsonl\n    path: '{strem}.jsonl'"),
     "stage 'log': key 'path': jsonl log: path template '{strem}.jsonl' has unknown field(s) ['strem']"),
    ("output folder is a file", "validate {graph}", GRAPH.replace("output_dir: out", "output_dir: clip.mp4"),
     "runtime: key 'output_dir':"),
    ("--set value not YAML", "validate {graph} --set stages.log.path={{strem}}.jsonl", GRAPH,
     "--set stages.log.path={strem}.jsonl: the value is not valid YAML"),
    ("missing graph file", "validate {graph}", None, "no such graph file"),
    ("graph is a folder", "validate .", GRAPH, ": is a folder, not a graph file"),
    ("graph not UTF-8", "validate {graph}", GRAPH.encode("utf-16"), "not UTF-8"),
    ("graph not YAML", "validate {graph}", GRAPH.replace("{bind: null}", "{bind: null"), "invalid YAML"),
    ("run: misspelt model", "run {graph}", GRAPH.replace("tinypose_128x96_ov", "tinypose_128x96_0v"),
     "did you mean 'tinypose_128x96_ov'"),
    ("run: unknown URI scheme", "run {graph}", GRAPH.replace("clip.mp4", "rtps://127.0.0.1:8554/cam1"),
     "did you mean 'rtsp://'?"),
    ("run: publisher port in use", "run {graph}", RUNNABLE,
     "cannot bind 'tcp://127.0.0.1:{port}': the address is in use"),
    ("subscribe without a scheme", "subscribe 127.0.0.1:5555 --timeout 0.1", None,
     "address '127.0.0.1:5555' has no scheme (did you mean 'tcp://127.0.0.1:5555'?)"),
    ("evaluate falls: bad --param", "evaluate falls --param confirm_s=-1 --clip squat_side_view.mp4", None,
     "--param: confirm_s: Input should be greater than or equal to 0"),
    ("evaluate reps: unknown --param", "evaluate reps --param bogus=1 --clip squat_side_view.mp4", None,
     "--param: bogus: Extra inputs are not permitted"),
    ("evaluate falls: unknown clip", "evaluate falls --clip squat_side_veiw.mp4", None,
     "--clip squat_side_veiw.mp4: not labelled in "),
    ("evaluate reps: unknown clip", "evaluate reps --clip squat_side_veiw.mp4", None,
     "--clip squat_side_veiw.mp4: not labelled in "),
    ("evaluate reps: --cv without the cache", "evaluate reps --cv --no-cache --clip squat_side_view.mp4", None,
     "--cv replays the pose cache: leave out --no-cache and --pose"),
]


@pytest.fixture
def busy_port():
    """A port something is listening on, as a running streampose would."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def streampose_cli(command: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streampose", *command.split(), "--models", str(MODELS)]
                          if command.split()[0] in ("validate", "run") else
                          [sys.executable, "-m", "streampose", *command.split()],
                          capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("name,command,graph,expected", CASES, ids=[c[0] for c in CASES])
def test_user_errors_are_one_line_and_exit_2(tmp_path, busy_port, name, command, graph, expected):
    (tmp_path / "clip.mp4").write_bytes(b"")  # validate never decodes it
    path = tmp_path / "graph.yml"
    if isinstance(graph, str):
        path.write_text(graph.replace("{port}", str(busy_port)))
    elif graph is not None:
        path.write_bytes(graph)
    result = streampose_cli(command.format(graph=path), tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert expected.replace("{port}", str(busy_port)) in result.stderr


def test_validate_opens_no_stream_and_loads_no_network(tmp_path):
    # A model whose network cannot load, an empty video file and an RTSP camera that never
    # answers: `run` would fail or wait on each; validate must touch none of them.
    model = tmp_path / "models" / "picodet_s_192_lcnet_pedestrian_ov"
    shutil.copytree(MODELS / model.name, model)
    (model / "model.bin").write_bytes(b"not weights")
    graph = GRAPH.replace("  - id: cam1\n", "  - id: cam0\n    uri: rtsp://127.0.0.1:{port}/cam\n  - id: cam1\n")
    with socket.socket() as camera:
        camera.bind(("127.0.0.1", 0))
        camera.listen()
        camera.setblocking(False)
        (tmp_path / "clip.mp4").write_bytes(b"")
        (tmp_path / "graph.yml").write_text(graph.replace("{port}", str(camera.getsockname()[1])))
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "streampose", "validate", "graph.yml", "--models",
                                 str(tmp_path / "models"), "--models", str(MODELS)],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("graph.yml: ok (2 sources, 5 stages)")
        assert time.monotonic() - started < 20
        with pytest.raises(BlockingIOError):
            camera.accept()  # nobody connected
    assert not (tmp_path / "out").exists()  # nor was anything written


def test_validate_warns_of_a_port_in_use(tmp_path, busy_port):
    (tmp_path / "clip.mp4").write_bytes(b"")
    graph = GRAPH.replace("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{busy_port}").replace(
        "bind: null", f"bind: 127.0.0.1:{busy_port}")
    (tmp_path / "graph.yml").write_text(graph)
    result = streampose_cli("validate graph.yml", tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith(f"graph.yml:16:11: stage 'publish': key 'bind': warning: port {busy_port} "
                                  f"on 127.0.0.1 is in use right now")
    assert warnings[1].startswith(f"graph.yml:21:19: runtime: key 'metrics.bind': warning: port {busy_port}")


def test_version():
    result = subprocess.run([sys.executable, "-m", "streampose", "--version"], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0
    assert result.stdout == f"streampose {streampose.__version__}\n" == "streampose 0.1.0\n"
