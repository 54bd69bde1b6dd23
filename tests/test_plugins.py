"""The plugin API and stage, and the hand_raised example plugin on real video."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from conftest import MEDIA, MODELS, VIDEOS
from streampose.frame import Frame, Persons, StreamEvent
from streampose.graph import schema
from streampose.graph.loader import GraphError, load_graph
from streampose.plugins.base import Plugin, PluginParams, make_event
from streampose.plugins.hand_raised import HandRaised
from streampose.plugins.registry import load_plugin_class
from streampose.plugins.stage import PluginStage
from streampose.runtime.stage import StageContext
from streampose.stages.detector import DetectorStage
from streampose.stages.keypoints import KeypointStage
from streampose.stages.tracker import TrackerStage

JUMPING_JACKS = "jumping_jacks_Ibbu_1.mp4"  # one person, frontal; hands overhead at each open position
WALKING = "office_man_walking_1280x720.mp4"  # one man walking, arms down


class TrackLog(Plugin):
    """Records the life of every track's state, to check the stage's bookkeeping."""

    class Params(PluginParams):
        tag: str = "seen"

    created: list[int] = []
    ended: list[tuple[int, bool]] = []  # (track id, ended at a frame rather than a stream gap)

    def new_track(self) -> dict:
        state = {"frames": 0, "number": len(self.created)}
        self.created.append(state["number"])
        return state

    def on_person(self, frame, i, state):
        state["frames"] += 1
        frame.persons.annotations[i][self.params.tag] = state["frames"]
        return [make_event(frame, i, "first_frame")] if state["frames"] == 1 else []

    def end_track(self, frame, track_id, state):
        self.ended.append((track_id, frame is not None))
        return [] if frame is None else [make_event(frame, 0, "track_ended", frames=state["frames"])]


@pytest.fixture
def track_log():
    TrackLog.created, TrackLog.ended = [], []
    return TrackLog


def plugin_stage(params: dict | None = None, **keys) -> PluginStage:
    spec = schema.Plugin(id="plugin", type="plugin", params=params or {}, **keys)
    return PluginStage("plugin", spec, StageContext(graph_dir=Path("."), output_dir=Path(".")))


def tracked_frame(stream: str, index: int, track_ids: list[int]) -> Frame:
    boxes = np.array([[10 + 40 * n, 10, 40 + 40 * n, 90] for n in range(len(track_ids))], np.float32)
    persons = Persons.from_boxes(boxes, np.full(len(track_ids), 0.9))
    persons.track_ids[:] = track_ids
    return Frame(stream, index, np.zeros((120, 200, 3), np.uint8), time.time(), index / 10, persons=persons)


# ----------------------------------------------------------------- loading

def test_a_shipped_plugin_loads_by_name_with_its_default_params():
    assert load_plugin_class("hand_raised", None) is HandRaised
    stage = plugin_stage(plugin="hand_raised")
    assert isinstance(stage.plugin, HandRaised)
    assert stage.plugin.params == HandRaised.Params()


def test_a_plugin_loads_by_module_path(track_log):
    stage = plugin_stage({"tag": "n"}, module="test_plugins:TrackLog")
    assert type(stage.plugin).__name__ == "TrackLog" and stage.plugin.params.tag == "n"


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution `wave-plugin` installed on sys.path, declaring entry point `wave`."""
    (tmp_path / "wave_plugin.py").write_text(textwrap.dedent("""\
        from streampose.plugins.base import Plugin, PluginParams

        class Wave(Plugin):
            class Params(PluginParams):
                speed: float = 1.0

            def on_person(self, frame, i, state):
                frame.persons.annotations[i]["waving"] = self.params.speed
                return []

        class NotAPlugin:
            pass
        """))
    info = tmp_path / "wave_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wave-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[streampose.plugins]\nwave = wave_plugin:Wave\n"
                                           "broken = wave_plugin:NotAPlugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_an_installed_plugin_loads_by_its_entry_point_name(installed_plugin):
    stage = plugin_stage({"speed": 2.5}, plugin="wave")
    frame = tracked_frame("cam", 0, [4])
    stage.run([frame])
    assert frame.persons.annotations[0] == {"waving": 2.5}
    with pytest.raises(ValueError, match="entry point broken is not a streampose.plugins.base.Plugin subclass"):
        load_plugin_class("broken", None)


def test_an_unknown_plugin_name_lists_the_available_ones(installed_plugin):
    with pytest.raises(ValueError) as error:
        plugin_stage(plugin="hand_rised")
    message = str(error.value)
    assert "unknown plugin 'hand_rised'" in message
    for available in ("hand_raised", "wave"):
        assert available in message


@pytest.mark.parametrize("module, expected", [
    ("streampose.plugins.nothing:Foo", "cannot load plugin streampose.plugins.nothing:Foo"),
    ("streampose.plugins.hand_raised:Nope", "cannot load plugin streampose.plugins.hand_raised:Nope"),
    ("streampose.plugins.hand_raised", "expected package.module:ClassName"),
    ("streampose.frame:Frame", "streampose.frame:Frame is not a streampose.plugins.base.Plugin subclass"),
])
def test_a_bad_module_path_is_named(module, expected):
    with pytest.raises(ValueError, match=expected):
        load_plugin_class(None, module)


def test_exactly_one_of_plugin_and_module():
    for keys in ({}, {"plugin": "hand_raised", "module": "streampose.plugins.hand_raised:HandRaised"}):
        with pytest.raises(ValueError, match="exactly one of 'plugin'"):
            load_plugin_class(keys.get("plugin"), keys.get("module"))


@pytest.mark.parametrize("params, expected", [
    ({"margin": "high"}, "params.margin: input should be a valid number"),
    ({"hold": 1}, "params.hold: extra inputs are not permitted"),
    ({"hold_s": -1}, "params.hold_s: input should be greater than or equal to 0"),
    ({"margin": 0.1, "release_margin": 0.2}, "params: release_margin .0.2. must be below margin .0.1."),
])
def test_bad_params_are_named_by_key(params, expected):
    with pytest.raises(ValueError, match=f"^plugin HandRaised: {expected}"):
        plugin_stage(params, plugin="hand_raised")


def test_a_graph_with_bad_plugin_params_fails_to_load_naming_stage_and_key(tmp_path):
    path = tmp_path / "graph.yml"
    path.write_text(yaml.safe_dump({
        "sources": [{"id": "jj", "uri": str(VIDEOS / JUMPING_JACKS)}],
        "stages": [{"id": "hands", "type": "plugin", "plugin": "hand_raised", "params": {"hold_s": "long"}}],
        "runtime": {"metrics": {"bind": None}},
    }))
    with pytest.raises(GraphError, match=r"stage 'hands': key 'params.hold_s': input should be a valid number"):
        load_graph(path)


# ----------------------------------------------------------------- per-track state

def test_each_track_gets_its_own_state_freed_when_the_track_ends(track_log):
    stage = plugin_stage(module="test_plugins:TrackLog")
    frames = [tracked_frame("cam", 0, [1, 2, -1]), tracked_frame("cam", 1, [1, 2]), tracked_frame("cam", 2, [2])]
    frames[2].ended_tracks.append(1)
    for frame in frames:
        stage.run([frame])

    assert track_log.created == [0, 1]  # two states; the untracked person gets none
    assert [a.get("seen") for a in frames[0].persons.annotations] == [1, 1, None]
    assert [a["seen"] for a in frames[1].persons.annotations] == [2, 2]
    assert frames[2].persons.annotations[0]["seen"] == 3  # track 2 kept its state
    assert [e.kind for e in frames[0].events] == ["first_frame", "first_frame"]
    assert frames[1].events == []
    # Track 1 ended at frame 2: its state is gone and its last event is on that frame.
    assert track_log.ended == [(1, True)]
    assert [(e.kind, e.data) for e in frames[2].events] == [("track_ended", {"frames": 2})]
    assert stage.live_states == 1

    # An id seen again after it ended starts from a fresh state.
    again = tracked_frame("cam", 3, [1])
    stage.run([again])
    assert again.persons.annotations[0]["seen"] == 1 and track_log.created == [0, 1, 2]


def test_a_stream_gap_frees_that_streams_states_only(track_log):
    stage = plugin_stage(module="test_plugins:TrackLog")
    stage.run([tracked_frame("cam", 0, [1, 2]), tracked_frame("door", 0, [1])])
    assert stage.live_states == 3

    stage.stream_event(StreamEvent("cam", "lost", segment=0, detail="read timeout"))
    assert stage.live_states == 1
    assert sorted(track_log.ended) == [(1, False), (2, False)]

    after = tracked_frame("door", 1, [1])
    stage.run([after])
    assert after.persons.annotations[0]["seen"] == 2  # the other stream's track kept its state
    stage.stream_event(StreamEvent("door", "ended", segment=0))
    assert stage.live_states == 0


# ----------------------------------------------------------------- hand_raised on real video

def pose_stages():
    context = StageContext(graph_dir=Path("."), output_dir=Path("."), model_paths=[MODELS])
    return [
        DetectorStage("detect", schema.Detector(id="detect", type="detector", model="picodet_s_192_pedestrian"),
                      context),
        TrackerStage("track", schema.TrackerParams(id="track", type="tracker"), context),
        KeypointStage("pose", schema.Keypoints(id="pose", type="keypoints", model="tinypose_128x96_ov"), context),
    ]


def run_video(name: str, plugin: PluginStage, start_s: float, end_s: float) -> list[Frame]:
    """The video's frames from start_s to end_s through detector, tracker, keypoints and the plugin."""
    stages = pose_stages() + [plugin]
    frames = []
    with av.open(str(VIDEOS / name)) as container:
        for index, decoded in enumerate(container.decode(video=0)):
            if decoded.time < start_s:
                continue
            if decoded.time > end_s:
                break
            frame = Frame("cam", index, decoded.to_ndarray(format="bgr24"), time.time(), float(decoded.time))
            for stage in stages:
                stage.run([frame])
            frames.append(frame)
    for stage in stages:
        stage.close()
    return frames


def test_hands_overhead_in_jumping_jacks_raise_one_event_per_open_position():
    end_s = 2.8
    labels = yaml.safe_load((MEDIA / "labels.yml").read_text())[JUMPING_JACKS]
    open_times = [t for t in labels["reps"]["jumping_jack"]["bottoms_s"] if t < end_s - 0.15]
    frames = run_video(JUMPING_JACKS, plugin_stage(plugin="hand_raised"), 0.0, end_s)

    events = [event for frame in frames for event in frame.events]
    assert [e.kind for e in events] == ["hand_raised"] * len(open_times)
    assert len({e.track_id for e in events}) == 1
    for event, open_time in zip(events, open_times):
        # Raised as the arms pass above the head, around the widest open position.
        assert open_time - 0.25 <= event.media_time <= open_time + 0.15, (event, open_time)
        assert event.data["hand"] in ("left", "right") and event.data["height"] >= 0.2

    tracked = [frame for frame in frames if len(frame.persons)]
    assert len(tracked) >= len(frames) - 3  # the tracker confirms the person within its min_hits
    raised = np.array([frame.persons.annotations[0]["hand_raised"] for frame in tracked])
    times = np.array([frame.media_time for frame in tracked])
    near_open = np.abs(times[:, None] - np.array(open_times)) <= 0.15  # (frames, open positions)
    assert (raised[:, None] & near_open).any(axis=0).all()
    # Halfway between open positions the arms are down at the sides.
    closed_times = (np.array(open_times[:-1]) + np.array(open_times[1:])) / 2
    assert not raised[np.abs(times[:, None] - closed_times).argmin(axis=0)].any()
    # Each raise is one run of raised frames, begun by its event.
    starts = np.flatnonzero(np.diff(raised.astype(int)) == 1) + 1
    assert [times[i] for i in starts] == [e.media_time for e in events]


def test_a_man_walking_with_his_arms_down_never_raises_a_hand():
    plugin = plugin_stage({"hold_s": 0.0}, plugin="hand_raised")
    frames = run_video(WALKING, plugin, 0.4, 1.6)
    tracked = [frame for frame in frames if len(frame.persons)]
    assert len(tracked) >= len(frames) - 3
    assert all(a["hand_raised"] is False for frame in tracked for a in frame.persons.annotations)
    assert not any(frame.events for frame in frames)


def test_hand_raised_needs_keypoints():
    stage = plugin_stage(plugin="hand_raised")
    with pytest.raises(ValueError, match="hand_raised needs keypoints"):
        stage.run([tracked_frame("cam", 0, [1])])
