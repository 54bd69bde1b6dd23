"""Graph files: every malformed graph gets one exact, located error."""

import textwrap

import pytest

from streampose.graph.loader import GraphError, load_graph

GOOD = """\
sources:
  - id: cam1
    uri: clip.mp4
stages:
  - id: detect
    type: noop
    batch: {max_size: 4}
  - id: publish
    type: publisher
"""

DIAMOND = """\
sources:
  - id: cam1
    uri: clip.mp4
stages:
  - id: a
    type: noop
  - {id: left, type: noop, inputs: [a]}
  - {id: right, type: noop, inputs: [a]}
  - id: log
    type: jsonl
    inputs: [left, right]
"""

# (name, graph text, expected error lines) -- line:col point at the offending key or value.
MALFORMED = [
    ("typo in a stage key", GOOD.replace("batch:", "bacth:"),
     ["{f}:7:5: stage 'detect': unknown key 'bacth' (did you mean 'batch'?)"]),
    ("typo in a nested key", GOOD.replace("max_size", "max_sise"),
     ["{f}:7:13: stage 'detect': unknown key 'batch.max_sise' (did you mean 'max_size'?)"]),
    ("unknown stage type", GOOD.replace("type: noop", "type: nop"),
     ["{f}:6:11: stage 'detect': unknown stage type 'nop' (did you mean 'noop'?); valid types: "
      "noop, noop_sink, publisher, recorder, jsonl, clips, mqtt, webhook, live, detector, keypoints, pose, tracker, smoother, lift3d, jde, plugin"]),
    ("wrong type", GOOD.replace("max_size: 4", "max_size: four"),
     ["{f}:7:23: stage 'detect': key 'batch.max_size': input should be a valid integer, got 'four'"]),
    ("out of range", GOOD.replace("max_size: 4", "max_size: 0"),
     ["{f}:7:23: stage 'detect': key 'batch.max_size': input should be greater than or equal to 1, got 0"]),
    ("missing required key", GOOD.replace("    uri: clip.mp4\n", ""),
     ["{f}:2:5: source 'cam1': missing required key 'uri'"]),
    ("duplicate id", GOOD.replace("id: publish", "id: detect"),
     ["{f}:8:9: stage 'detect': duplicate id (already used by a stage)"]),
    ("dangling input", GOOD + "    inputs: [detcet]\n",
     ["{f}:10:14: stage 'publish': input 'detcet' is neither a source nor a stage (did you mean 'detect'?)"]),
    ("cycle", GOOD.replace("    batch: {max_size: 4}\n", "    inputs: [cam1, publish]\n"),
     ["{f}:7:13: stage 'detect': inputs form a cycle: detect -> publish -> detect"]),
    ("source feeding nothing", GOOD.replace("    batch: {max_size: 4}\n", "    inputs: [publish2]\n")
     .replace("id: publish", "id: publish2"),
     ["{f}:2:9: source 'cam1': feeds no stage (name it in a stage's inputs)"]),
    # Branches share each frame: a diamond would hand jsonl every frame twice (it wrote 10 lines
    # for 5 frames) while left and right change the same frame in two threads. Sinks may branch
    # off after the last stage that changes frames (GOOD plus a sink is fine).
    ("diamond", DIAMOND,
     ["{f}:11:13: stage 'log': frames of 'cam1' reach it by 2 paths (through left and right): it would take "
      "each frame 2 times; give it one of them as input (a graph is a chain of stages that fill in frames, "
      "with sinks branching off it)",
      "{f}:7:36: stage 'left': 'a' hands each frame to it and to 'right' at once, and it changes the frame the "
      "branches share; chain the stages that change frames and branch off only sinks (noop_sink, publisher, recorder, "
      "jsonl, clips, mqtt, webhook, live) after the last of them"]),
    ("two sinks feeding one", GOOD + "  - {id: log, type: jsonl, inputs: [detect, publish]}\n",
     ["{f}:10:36: stage 'log': frames of 'cam1' reach it by 2 paths (through detect and publish): it would "
      "take each frame 2 times; give it one of them as input (a graph is a chain of stages that fill in "
      "frames, with sinks branching off it)"]),
    ("a processor beside a sink", GOOD + "  - {id: more, type: noop, inputs: [detect]}\n",
     ["{f}:10:36: stage 'more': 'detect' hands each frame to it and to 'publish' at once, and it changes the "
      "frame the branches share; chain the stages that change frames and branch off only sinks (noop_sink, publisher, "
      "recorder, jsonl, clips, mqtt, webhook, live) after the last of them"]),
    ("unset environment variable", GOOD.replace("clip.mp4", "${STREAMPOSE_TEST_UNSET_VAR}"),
     ["{f}:3:10: source 'cam1': environment variable STREAMPOSE_TEST_UNSET_VAR is not set "
      "(set it, or write ${STREAMPOSE_TEST_UNSET_VAR:-default})"]),
    ("invalid yaml", GOOD.replace("batch: {max_size: 4}", "batch: {max_size: 4"),
     ["{f}:8:7: invalid YAML: expected ',' or '}', but got ':'"]),
    ("runtime key out of range", GOOD + "runtime:\n  queue_size: 0\n",
     ["{f}:11:15: runtime: key 'queue_size': input should be greater than or equal to 1, got 0"]),
]


def write(tmp_path, text):
    path = tmp_path / "graph.yml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name,text,expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_graph_gets_exact_error(tmp_path, name, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(GraphError) as caught:
        load_graph(path)
    assert caught.value.problems == [line.replace("{f}", str(path)) for line in expected]


def test_good_graph_defaults_and_inputs(tmp_path):
    graph = load_graph(write(tmp_path, GOOD))
    assert graph.inputs == {"detect": ["cam1"], "publish": ["detect"]}
    assert graph.spec.stages[1].bind == "tcp://127.0.0.1:5555"
    assert graph.spec.runtime.metrics.bind.startswith("127.0.0.1:")


def test_env_interpolation_keeps_types(tmp_path, monkeypatch):
    monkeypatch.setenv("SP_BATCH", "6")
    monkeypatch.setenv("SP_CAM", "rtsp://127.0.0.1:8554/cam")
    text = GOOD.replace("batch: {max_size: 4}", "batch:\n      max_size: ${SP_BATCH}").replace("clip.mp4", "${SP_CAM}")
    text = text.replace("type: publisher", "type: publisher\n    bind: ${SP_BIND:-tcp://127.0.0.1:6000}")
    graph = load_graph(write(tmp_path, text))
    assert graph.spec.stages[0].batch.max_size == 6
    assert graph.spec.sources[0].uri == "rtsp://127.0.0.1:8554/cam"
    assert graph.spec.stages[1].bind == "tcp://127.0.0.1:6000"


def test_command_line_overrides(tmp_path):
    path = write(tmp_path, GOOD)
    graph = load_graph(path, ["stages.detect.batch.max_size=16", "sources.cam1.options.loop=true",
                              "runtime.in_flight=3"])
    assert graph.spec.stages[0].batch.max_size == 16
    assert graph.spec.sources[0].options.loop is True
    assert graph.spec.runtime.in_flight == 3
    with pytest.raises(GraphError) as caught:
        load_graph(path, ["stages.detect.batch.max_size=-1"])
    assert caught.value.problems == ["--set stages.detect.batch.max_size=-1: stage 'detect': key 'batch.max_size': "
                                     "input should be greater than or equal to 1, got -1"]
    with pytest.raises(GraphError) as caught:
        load_graph(path, ["stages.detcet.delay_ms=1"])
    assert caught.value.problems == ["--set stages.detcet.delay_ms=1: no stage with id 'detcet' (did you mean 'detect'?)"]


def test_shipped_graphs_validate():
    from conftest import REPO
    graphs = sorted((REPO / "graphs").glob("*.yml"))
    assert graphs
    for path in graphs:
        load_graph(path)


def test_parameter_reference_is_up_to_date():
    from conftest import REPO

    from streampose.graph.docs import markdown
    assert (REPO / "docs" / "graphs-reference.md").read_text() == markdown() + "\n", \
        "docs/graphs-reference.md is stale: run `make docs`"


PLUGIN_GRAPH = GOOD + """\
  - id: hands
    type: plugin
    plugin: hand_raised
    params:
      hold_s: 0.2
"""


def test_plugin_params_are_validated_by_the_plugin_schema(tmp_path):
    load_graph(write(tmp_path, PLUGIN_GRAPH))
    path = write(tmp_path, PLUGIN_GRAPH.replace("hold_s: 0.2", "hold_sec: 0.2"))
    with pytest.raises(GraphError) as caught:
        load_graph(path)
    assert caught.value.problems == [f"{path}:14:7: stage 'hands': unknown key 'params.hold_sec' "
                                     f"(did you mean 'hold_s'?)"]
    path = write(tmp_path, PLUGIN_GRAPH.replace("hold_s: 0.2", "hold_s: -1"))
    with pytest.raises(GraphError) as caught:
        load_graph(path)
    assert caught.value.problems == [f"{path}:14:15: stage 'hands': key 'params.hold_s': "
                                     f"input should be greater than or equal to 0, got -1"]
    path = write(tmp_path, PLUGIN_GRAPH.replace("plugin: hand_raised", "plugin: hand_rised"))
    with pytest.raises(GraphError) as caught:
        load_graph(path)
    assert caught.value.problems[0].startswith(f"{path}:12:13: stage 'hands': unknown plugin 'hand_rised'; "
                                               f"available: fall, hand_raised, reps")


def test_validate_command_exits_2_on_errors(tmp_path):
    import subprocess
    import sys

    from conftest import MODELS
    # validate finds the model and the file but decodes nothing: an empty clip.mp4 passes
    # (tests/test_graph_check.py checks what else validate looks at).
    (tmp_path / "clip.mp4").write_bytes(b"")
    text = GOOD.replace("type: noop\n    batch: {max_size: 4}",
                        "type: detector\n    model: picodet_s_192_lcnet_pedestrian_ov")
    path = write(tmp_path, text)
    command = [sys.executable, "-m", "streampose", "validate", "--models", str(MODELS)]
    ok = subprocess.run([*command, str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"{path}: ok (1 sources, 2 stages)")
    bad = write(tmp_path, text.replace("model:", "modle:"))
    failed = subprocess.run([*command, str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 2
    assert f"{bad}:7:5: stage 'detect': unknown key 'modle' (did you mean 'model'?)" in failed.stderr
