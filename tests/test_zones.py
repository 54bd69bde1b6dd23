"""Zones per stream: polygons in normalised coordinates on a graph's sources, validated with the
graph, carried by every frame, used by the fall plugin (rest: no alarm; ignore: dropped; floor:
carves a rest zone) and drawn on recordings."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import MODELS, VIDEOS
from streampose.frame import Frame, Persons
from streampose.geometry.zones import Zone, contains, polygon_problem, zone_at
from streampose.graph import schema
from streampose.graph.loader import GraphError, load_graph
from streampose.plugins.stage import PluginStage
from streampose.runtime.pipeline import Pipeline
from streampose.runtime.stage import StageContext
from streampose.sinks.draw import ZONE_COLOURS, ZONE_FILL, draw_frame
from test_fall import STANDING, View, fall_angle, tipped, times

# An L-shaped (concave) polygon: the notch at the top right is outside.
L_SHAPE = np.array([[0.1, 0.1], [0.4, 0.1], [0.4, 0.5], [0.8, 0.5], [0.8, 0.9], [0.1, 0.9]])


def test_points_in_a_concave_polygon():
    points = np.array([[0.2, 0.2], [0.6, 0.3], [0.6, 0.7], [0.05, 0.5], [0.9, 0.7], [0.3, 0.95]])
    assert contains(L_SHAPE, points).tolist() == [True, False, True, False, False, False]
    rest, floor = Zone("bed", "rest", L_SHAPE), Zone("beside", "floor", np.array([[0.5, 0.4], [0.9, 0.4], [0.9, 1], [0.5, 1]]))
    assert zone_at([floor, rest], np.array([0.6, 0.7])) is floor        # the first listed wins
    assert zone_at([rest, floor], np.array([0.6, 0.7])) is rest
    assert zone_at([rest, floor], np.array([0.2, 0.2])) is rest
    assert zone_at([rest, floor], np.array([np.nan, 0.2])) is None


def test_a_polygon_must_be_simple_and_have_an_area():
    assert polygon_problem(L_SHAPE) is None
    bow_tie = np.array([[0.1, 0.1], [0.5, 0.5], [0.5, 0.1], [0.1, 0.5]])
    assert "cross" in polygon_problem(bow_tie)
    assert "area" in polygon_problem(np.array([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]]))


GRAPH = """\
sources:
  - id: ward
    uri: {video}
    zones:
      - {{name: bed, kind: rest, polygon: {polygon}}}
stages:
  - {{id: noop, type: noop}}
runtime: {{metrics: {{bind: null}}}}
"""


@pytest.mark.parametrize("polygon, says", [
    ("[[0.1, 0.1], [0.5, 0.5], [0.5, 0.1], [0.1, 0.5]]", "edges 1-2 and 3-4 cross"),
    ("[[0.1, 0.1], [1.5, 0.1], [0.5, 0.5]]", "key 'zones.0.polygon.1.0': input should be less than or equal to 1"),
    ("[[0.1, 0.1], [0.5, 0.1]]", "key 'zones.0.polygon': list should have at least 3 items"),
    ("[[0.1, 0.1], [0.5, 0.1], [true, 0.5]]", "key 'zones.0.polygon.2.0': input should be a valid number"),
])
def test_a_bad_polygon_is_one_line_naming_file_line_source_and_key(tmp_path, polygon, says):
    path = tmp_path / "graph.yml"
    path.write_text(GRAPH.format(video=VIDEOS / "fall_room_chair_320x240.mp4", polygon=polygon))
    with pytest.raises(GraphError) as error:
        load_graph(path)
    (line,) = str(error.value).strip().splitlines()
    assert line.startswith(f"{path}:5:") and "source 'ward'" in line and says in line, line


def test_zone_names_are_unique_and_kinds_known(tmp_path):
    path = tmp_path / "graph.yml"
    good = "[[0.1, 0.1], [0.5, 0.1], [0.5, 0.5]]"
    path.write_text(GRAPH.format(video="v.mp4", polygon=good).replace(
        "    zones:\n", f"    zones:\n      - {{name: bed, kind: floor, polygon: {good}}}\n"))
    with pytest.raises(GraphError, match="zone names must be unique in a stream; repeated: bed"):
        load_graph(path)
    path.write_text(GRAPH.format(video="v.mp4", polygon=good).replace("kind: rest", "kind: sofa"))
    with pytest.raises(GraphError, match="key 'zones.0.kind'"):
        load_graph(path)


# ----------------------------------------------------------------- the fall plugin

VIEW = View()
# The fall's body lies to the right of the feet (x 320..620 px of 640, y ~400 of 480).
WHERE_IT_LIES = np.array([[0.55, 0.6], [1.0, 0.6], [1.0, 1.0], [0.55, 1.0]])


def fall_in(zones: tuple[Zone, ...], params: dict | None = None) -> tuple[list, list[dict]]:
    """A sideways fall at 2.0-2.6 s, then lying for 9.4 s, 10 fps, in a stream with `zones`;
    (events, the person's annotations per frame)."""
    spec = schema.Plugin(id="fall", type="plugin", plugin="fall", params=params or {})
    stage = PluginStage("fall", spec, StageContext(graph_dir=Path("."), output_dir=Path(".")))
    image = np.zeros((VIEW.height, VIEW.width, 3), np.uint8)
    events, annotations = [], []
    for index, t in enumerate(times(10, 0, 12)):
        pose = tipped(fall_angle(t, 2.0, 0.6))
        persons = Persons.from_boxes(VIEW.box(pose)[None], np.array([0.9]))
        persons.track_ids[:] = [1]
        persons.keypoints = VIEW.keypoints(pose)[None]
        frame = Frame("ward", index, image, time.time(), t, persons=persons, zones=zones)
        stage.process([frame])
        events += frame.events
        annotations.append(frame.persons.annotations[0])
    return events, annotations


def test_lying_in_a_rest_zone_raises_no_alarm_and_elsewhere_it_does():
    events, _ = fall_in(())
    assert [e.kind for e in events] == ["fall_started", "fall_confirmed", "person_down"]
    assert all("zone" not in e.data for e in events)

    bed = Zone("bed", "rest", WHERE_IT_LIES)
    events, annotations = fall_in((bed,))
    assert events == []
    assert annotations[0] == {"fall_score": annotations[0]["fall_score"], "fall_state": "upright"}
    assert annotations[-1]["zone"] == "bed" and annotations[-1]["fall_state"] == "down"

    # A floor zone listed before the bed carves the lying place out of it: the alarms come back,
    # carrying the zone.
    beside = Zone("beside_bed", "floor", WHERE_IT_LIES)
    events, _ = fall_in((beside, bed))
    assert [e.kind for e in events] == ["fall_started", "fall_confirmed", "person_down"]
    assert [e.data.get("zone") for e in events[1:]] == ["beside_bed", "beside_bed"]
    assert events[1].data["zone_kind"] == "floor"


def test_a_person_in_an_ignore_zone_is_dropped():
    screen = Zone("tv", "ignore", np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
    events, annotations = fall_in((screen,))
    assert events == [] and all(a == {} for a in annotations)


# ----------------------------------------------------------------- graph and recording

class EventCollector(Pipeline):
    """A graph keeping every event its frames carry at the end."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events = []

    def _on_processed(self, frame: Frame) -> None:
        self.events += frame.events
        super()._on_processed(frame)


def test_a_graph_carries_its_sources_zones_to_the_plugin_and_the_recording(tmp_path):
    """A real clip (a man falls at 15.4-16.0 s onto the floor at the right edge) through the
    fall graph as two sources: with a rest zone over where he lies, no alarm; the recording shows
    the zone; without zones, the fall is confirmed. (One graph: the models load once.)"""
    video = VIDEOS / "fall_room_chair_320x240.mp4"
    zone = "[[0.55, 0.45], [1.0, 0.45], [1.0, 1.0], [0.55, 1.0]]"
    path = tmp_path / "zones.yml"
    path.write_text(textwrap.dedent("""\
        sources:
          - id: with
            uri: {video}
            zones: [{{name: mat, kind: rest, polygon: {zone}}}]
          - id: without
            uri: {video}
        stages:
          - {{id: detect, type: detector, model: picodet_s_320_lcnet_pedestrian_ov}}
          - {{id: pose, type: keypoints, model: tinypose_128x96_ov}}
          - {{id: track, type: tracker, algorithm: ocsort, low_match_iou: 0.3}}
          - {{id: fall, type: plugin, plugin: fall}}
          - {{id: log, type: jsonl, path: "{{stream}}.jsonl"}}
          - {{id: record, type: recorder, inputs: [fall], path: "{{stream}}.mp4", crf: 18}}
        runtime: {{metrics: {{bind: null}}}}
        """).format(video=video, zone=zone))
    pipeline = EventCollector(load_graph(path), model_paths=[MODELS], output_dir=tmp_path)
    pipeline.start()
    assert pipeline.wait(600)
    results = {}
    for name in ("with", "without"):
        messages = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        results[name] = messages, [e.kind for e in pipeline.events if e.stream == name]
    assert len(results["with"][0]) == len(results["without"][0]) == 193  # every frame of both
    alarms = {name: [kind for kind in kinds if kind in ("fall_confirmed", "person_down")]
              for name, (_, kinds) in results.items()}
    assert alarms["without"] and not alarms["with"], alarms
    in_zone = [p["annotations"].get("zone") for m in results["with"][0] for p in m["persons"]]
    assert "mat" in in_zone

    import av
    with av.open(str(tmp_path / "with.mp4")) as container:
        first = next(container.decode(video=0)).to_ndarray(format="bgr24")
    with av.open(str(video)) as container:
        raw = next(container.decode(video=0)).to_ndarray(format="bgr24")
    # Inside the zone (away from its outline and label) the picture is tinted towards the rest colour.
    inside = (slice(200, 230), slice(220, 300))
    shift = first[inside].astype(float).mean(axis=(0, 1)) - raw[inside].astype(float).mean(axis=(0, 1))
    expected = ZONE_FILL * (np.array(ZONE_COLOURS["rest"]) - raw[inside].astype(float).mean(axis=(0, 1)))
    assert np.allclose(shift, expected, atol=6), (shift, expected)


# ----------------------------------------------------------------- the evaluation

def test_evaluate_falls_takes_zones_per_clip_and_checks_them(tmp_path):
    """`streampose evaluate falls --zones FILE`: a rest zone over the whole picture of a fall
    clip hides its fall; the packaged file's zones are valid and name labelled clips; a bad
    polygon is one line naming the file, the clip and the key."""
    import subprocess
    import sys

    import yaml

    from conftest import MEDIA, REPO
    from streampose.evaluate import clip_zones

    labels = yaml.safe_load((MEDIA / "labels.yml").read_text())
    packaged = clip_zones.load()
    assert packaged and set(packaged) <= set(labels)
    assert {z.kind for zones in packaged.values() for z in zones} == {"rest"}

    clip = "fall_faint_studio_1280x720.mp4"
    whole = tmp_path / "whole.yml"
    whole.write_text(f"{clip}:\n  - {{name: mat, kind: rest, polygon: [[0, 0], [1, 0], [1, 1], [0, 1]]}}\n")

    def evaluate(*options):
        return subprocess.run([sys.executable, "-m", "streampose", "evaluate", "falls", "--clip", clip,
                               "--videos", str(VIDEOS), "--labels", str(MEDIA / "labels.yml"), "--models", str(MODELS),
                               "--cache", str(tmp_path / "cache"), "--no-plots", *options],
                              capture_output=True, text=True, timeout=600, cwd=REPO)

    results = {}
    for name, options in (("without", ["--no-zones"]), ("with", ["--zones", str(whole)])):
        evaluate(*options, "-o", str(tmp_path / name))
        results[name] = json.loads((tmp_path / name / "falls.json").read_text())["clips"][0]
    assert results["without"]["falls"][0]["detected"]
    assert not results["with"]["falls"][0]["detected"] and results["with"]["alarms"] == []

    bad = tmp_path / "bad.yml"
    bad.write_text(f"{clip}:\n  - {{name: mat, kind: rest, polygon: [[0, 0], [1, 1], [1, 0], [0, 1]]}}\n")
    result = evaluate("--zones", str(bad), "-o", str(tmp_path / "bad"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"{bad}: {clip}.0.polygon: ") and "cross" in line, line
