"""Hostile or broken graph input (issue 13): each case is refused by `validate` (and `run`)
in milliseconds with exactly one line on stderr, exit status 2, and no traceback; nothing
of a plugin module runs during `validate`."""

import os
import subprocess
import sys
import time

import pytest
from conftest import REPO

GRAPH = """\
sources:
  - id: cam1
    uri: clip.mp4
stages:
  - id: pass
    type: noop
  - id: log
    type: jsonl
runtime:
  output_dir: out
  metrics: {bind: null}
"""


def alias_bomb(levels: int) -> str:
    lines = ["x0: &x0 [a, a, a, a, a, a, a, a, a, a]"]
    lines += [f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 10)}]" for i in range(1, levels)]
    return GRAPH + "bomb:\n" + "".join(f"  {line}\n" for line in lines)


# (case id, command after `streampose` ({graph}: the graph file), graph text or bytes, extra
# environment, the exact line expected on stderr ({graph}: the graph file's path)).
CASES = [
    ("alias bomb", "validate {graph}", alias_bomb(6), {},
     "{graph}:17:3: graph: key 'bomb.x4': more than 20000 values once aliases (*name) are expanded; "
     "write the values out"),
    ("recursive alias", "validate {graph}", GRAPH + "x: &a [*a]\n", {},
     "{graph}:12:8: graph: alias *a refers to itself (a recursive alias)"),
    ("deep nesting", "validate {graph}", GRAPH + "x: " + "[" * 5000 + "]" * 5000 + "\n", {},
     "{graph}:12:35: graph: nested more than 32 levels deep"),
    ("huge integer", "validate {graph}", GRAPH.replace("  output_dir", "  queue_size: " + "9" * 5000 + "\n  output_dir"),
     {}, "{graph}:10:15: runtime: key 'queue_size': integer of 5000 digits is too large"),
    ("format width in a path", "validate {graph}",
     GRAPH.replace("type: jsonl", "type: jsonl\n    path: '{stream:>300000000}.jsonl'"), {},
     "{graph}:9:11: stage 'log': key 'path': path template '{stream:>300000000}.jsonl': only plain fields such "
     "as {stream} are allowed, or zero-padded numbers such as {segment:03d}; no other format specs, "
     "conversions, attributes or indices"),
    ("conversion in a path", "validate {graph}", GRAPH.replace("type: jsonl", "type: jsonl\n    path: '{stream!r}'"),
     {}, "{graph}:9:11: stage 'log': key 'path': path template '{stream!r}': only plain fields such as {stream} "
     "are allowed, or zero-padded numbers such as {segment:03d}; no other format specs, conversions, attributes "
     "or indices"),
    ("metrics log interval inf", "validate {graph}", GRAPH.replace("bind: null", "bind: null, log_interval_s: .inf"),
     {}, "{graph}:11:41: runtime: key 'metrics.log_interval_s': input should be a finite number, got inf"),
    ("nan delay", "validate {graph}", GRAPH.replace("type: noop", "type: noop\n    delay_ms: .nan"), {},
     "{graph}:7:15: stage 'pass': key 'delay_ms': input should be a finite number, got nan"),
    ("boolean as a number", "validate {graph}", GRAPH.replace("type: noop", "type: noop\n    batch: {max_size: true}"),
     {}, "{graph}:7:23: stage 'pass': key 'batch.max_size': input should be a valid integer, got True"),
    ("second stages key", "validate {graph}", GRAPH + "stages:\n  - {id: pass, type: noop}\n", {},
     "{graph}:12:1: graph: key 'stages': duplicate key (first at line 4); a YAML mapping holds each key once"),
    ("duplicate output_dir", "validate {graph}", GRAPH.replace("output_dir: out", "output_dir: out\n  output_dir: b"),
     {}, "{graph}:11:3: runtime: key 'output_dir': duplicate key (first at line 10); a YAML mapping holds each "
     "key once"),
    ("input named twice", "validate {graph}", GRAPH.replace("type: noop", "type: noop\n    inputs: [cam1, cam1]"), {},
     "{graph}:7:20: stage 'pass': input 'cam1' is named twice (each frame would be processed twice)"),
    ("stream id ..", "validate {graph}", GRAPH.replace("cam1", ".."), {},
     "{graph}:2:9: source '..': key 'id': expected 1 to 64 letters, digits, _ . -, starting with a letter, "
     "digit or _, got '..'"),
    ("300-character stream id", "validate {graph}", GRAPH.replace("cam1", "c" * 300), {},
     f"{{graph}}:2:9: source '{'c' * 40}...': key 'id': expected 1 to 64 letters, digits, _ . -, starting with a "
     f"letter, digit or _, got '{'c' * 40}... (300 characters)'"),
    ("metrics bind abc", "validate {graph}", GRAPH.replace("bind: null", "bind: abc"), {},
     "{graph}:11:19: runtime: key 'metrics.bind': expected HOST:PORT without a scheme, got 'abc'; "
     "e.g. 127.0.0.1:9100, or null to serve no metrics"),
    ("metrics port 99999", "validate {graph}", GRAPH.replace("bind: null", "bind: '127.0.0.1:99999'"), {},
     "{graph}:11:19: runtime: key 'metrics.bind': expected HOST:PORT without a scheme, got '127.0.0.1:99999'; "
     "e.g. 127.0.0.1:9100, or null to serve no metrics"),
    ("output_dir under /proc", "validate {graph}", GRAPH.replace("output_dir: out", "output_dir: /proc/x"), {},
     "{graph}:10:15: runtime: key 'output_dir': cannot make folders in /proc (No such file or directory); "
     "choose a folder you can write to"),
    ("output_dir is a file", "validate {graph}", GRAPH.replace("output_dir: out", "output_dir: clip.mp4"), {},
     "{graph}:10:15: runtime: key 'output_dir': {dir}/clip.mp4 is a file, not a folder; choose another output "
     "folder"),
    ("graph not UTF-8", "validate {graph}", GRAPH.encode() + b"# \xff\n", {},
     "{graph}: not a text file (byte 0xff at offset 157 is not UTF-8); a graph is YAML text saved as UTF-8"),
    ("environment variable not YAML", "validate {graph}",
     GRAPH.replace("bind: null}", "bind: null}\n  queue_size: ${QUEUE}"), {"QUEUE": "[8"},
     "{graph}:12:15: runtime: key 'queue_size': the value of ${QUEUE} is not valid YAML (expected ',' or ']', "
     "but got '<stream end>'); quote it in the variable, e.g. '\"...\"'"),
    ("--set value an alias bomb", "validate {graph} --set runtime.x=[*a]", GRAPH, {},
     "--set runtime.x=[*a]: the value is not valid YAML (found undefined alias 'a'); quote it: "
     "--set runtime.x='\"[*a]\"'"),
    ("module .x", "validate {graph}", GRAPH.replace("type: noop", "type: plugin\n    module: .x:Cls"), {},
     "{graph}:7:13: stage 'pass': module '.x:Cls': expected package.module:ClassName"),
    ("module plugins switched off", "validate {graph}",
     GRAPH.replace("type: noop", "type: plugin\n    module: streampose.plugins.hand_raised:HandRaised"),
     {"STREAMPOSE_ALLOW_MODULES": "0"},
     "{graph}:7:13: stage 'pass': module 'streampose.plugins.hand_raised:HandRaised': module plugins are switched "
     "off (STREAMPOSE_ALLOW_MODULES=0); use a shipped or installed plugin (plugin: NAME)"),
    ("missing CURVE key file", "validate {graph}",
     GRAPH.replace("type: jsonl", "type: publisher\n    curve_secret_key: nokey"), {},
     "{graph}:9:23: stage 'log': key 'curve_secret_key': no such file {dir}/nokey; make keys with "
     "`streampose keys DIR` and name DIR/publisher.key_secret"),
    ("too many aliases", "validate {graph}", alias_bomb(9), {},
     "{graph}:20:32: graph: more than 64 aliases (*name); write the values out"),
    ("run: alias bomb", "run {graph}", alias_bomb(6), {},
     "{graph}:17:3: graph: key 'bomb.x4': more than 20000 values once aliases (*name) are expanded; "
     "write the values out"),
    ("run: stream id ..", "run {graph}", GRAPH.replace("cam1", ".."), {},
     "{graph}:2:9: source '..': key 'id': expected 1 to 64 letters, digits, _ . -, starting with a letter, "
     "digit or _, got '..'"),
    ("keys twice", "keys k", None, {}, "streampose keys: k/publisher.key exists; remove it first to make new keys"),
]


def streampose(command: str, cwd, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streampose", *command.split()], capture_output=True, text=True,
                          errors="replace", timeout=60, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), **env})


@pytest.mark.parametrize("name,command,graph,env,expected", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_in_one_line(tmp_path, name, command, graph, env, expected):
    (tmp_path / "clip.mp4").write_bytes(b"")
    path = tmp_path / "graph.yml"
    if isinstance(graph, str):
        path.write_text(graph)
    elif graph is not None:
        path.write_bytes(graph)
    if command.startswith("keys"):
        streampose(command, tmp_path, env)
    started = time.monotonic()
    result = streampose(command.replace("{graph}", str(path)), tmp_path, env)
    assert time.monotonic() - started < 20
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [expected.replace("{graph}", str(path)).replace("{dir}", str(tmp_path))]


def test_validate_runs_no_plugin_code(tmp_path):
    # A plugin module whose import writes a file: validate finds it and leaves it alone;
    # run imports it (and logs that it did).
    package = tmp_path / "myplugins"
    package.mkdir()
    (package / "__init__.py").write_text("open('package-ran', 'w').close()\n")
    (package / "wave.py").write_text(
        "open('module-ran', 'w').close()\n"
        "from streampose.plugins.base import Plugin\n"
        "class Wave(Plugin):\n"
        "    def on_person(self, frame, i, state):\n"
        "        return []\n")
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "graph.yml").write_text(GRAPH.replace("type: noop", "type: plugin\n    module: myplugins.wave:Wave"))
    env = {"PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
    result = subprocess.run([sys.executable, "-m", "streampose", "validate", "graph.yml"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "module-ran").exists() and not (tmp_path / "package-ran").exists()
    missing = GRAPH.replace("type: noop", "type: plugin\n    module: myplugins.nothing:Wave")
    (tmp_path / "graph.yml").write_text(missing)
    result = subprocess.run([sys.executable, "-m", "streampose", "validate", "graph.yml"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path, env={**os.environ, **env})
    assert result.stderr.splitlines() == ["graph.yml:7:13: stage 'pass': cannot load plugin myplugins.nothing:Wave: "
                                          "no module named 'myplugins.nothing'"]
    assert not (tmp_path / "package-ran").exists()
