"""Decisions of the fall plugin that one noisy frame must not make: a person counts as seen
upright only after upright readings in a row, a track lost after its drop has ended is not
confirmed on that drop, and a duration reaches its limit whatever the rounding of the sum of
its frame gaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test_fall import STANDING, Shot, View, blend, kinds, play, shot_frames, times, tipped
from streampose.frame import Event, Frame
from streampose.graph import schema
from streampose.plugins.stage import PluginStage
from streampose.runtime.stage import StageContext


def crouch_then_plank(upright_s: float, fps: float = 10) -> list[Frame]:
    """Bent over 55 degrees from the first frame (posture 0.32: never standing, never down), the
    detector's box reading standing for `upright_s` from 1.0 s while the keypoint model misses
    every joint (a body crouching in the dark), then lying down over 1.5 s from 5.0 s and lying
    to 20 s."""
    view = View()
    def pose(t):
        return blend(tipped(55), tipped(90), float(np.clip((t - 5.0) / 1.5, 0, 1)))

    frames = shot_frames([Shot(t, [(1, pose(t), 0.0)]) for t in times(fps, 0, 20)], view)
    for frame in frames:
        if 1.0 <= frame.media_time < 1.0 + upright_s:
            frame.persons.keypoints[0, :, 2] = 0.05
            frame.persons.boxes[0] = view.box(STANDING)
    return frames


def run(frames: list[Frame], params: dict) -> list[Event]:
    """The fall plugin stage over prepared frames; the events it raised."""
    spec = schema.Plugin(id="fall", type="plugin", plugin="fall", params=params)
    stage = PluginStage("fall", spec, StageContext(graph_dir=Path("."), output_dir=Path(".")))
    events = []
    for frame in frames:
        stage.run([frame])
        events += frame.events
    return events


def test_one_frame_read_upright_is_no_person_seen_upright():
    """adl_forearm_plank_home_dim at bf16: one frame of a crouching man read upright by his box
    alone, and lying in a plank 6 s later he raised person_down. Read upright for 0.5 s in a
    row, he was seen upright, and lying as long is a long lie."""
    assert run(crouch_then_plank(0.1), {"down_alarm_s": 6}) == []
    assert kinds(run(crouch_then_plank(0.5), {"down_alarm_s": 6})) == ["person_down"]


@pytest.mark.parametrize(("last_seen", "confirmed"), [(2.5, True), (3.2, False)])
def test_a_track_lost_after_its_drop_has_ended_is_not_confirmed_on_it(last_seen, confirmed):
    """Tips 60 degrees in 0.3 s (posture 0.49: past lying_release, not down) and stays so until
    lost: lost 0.2 s after the drop, it is lost half way down and confirmed; lost 0.9 s after,
    it has settled there (the drop still within fall_window_s, but no longer under way at the
    last sighting) and nothing is raised. adl_breakdance_floor_moves_gym_crowd at bf16: a dancer
    lost 0.7 s after a fast drop at posture 0.39 raised fall_confirmed."""
    shots = [Shot(t, [(1, tipped(60 * float(np.clip((t - 2) / 0.3, 0, 1))), 0.0)])
             for t in times(10, 0, last_seen + 0.05)]
    shots += [Shot(t, []) for t in times(10, last_seen + 0.1, last_seen + 0.5)]
    shots.append(Shot(round(last_seen + 0.5, 1), [], ended=(1,)))
    events, _, _ = play(shots)
    if confirmed:
        assert kinds(events) == ["fall_confirmed"] and events[0].data["last_seen"] == pytest.approx(last_seen)
    else:
        assert events == []


def test_lying_exactly_down_alarm_s_raises_person_down_at_that_frame():
    """At 25 fps, 150 frame gaps of 0.04 s sum to 5.999999999999998 s: down exactly down_alarm_s
    at the last frame of a clip (fall_home_elderly_walker_slow_collapse_istock at bf16), the
    person must still raise person_down."""
    def pose(t):
        return STANDING if t < 2.0 else blend(STANDING, tipped(90), min((t - 2.0) / 2.0, 1.0))

    shots = [Shot(t, [(1, pose(t), 0.0)]) for t in times(25, 0, 14)]
    events, annotations, _ = play(shots)
    went_down = next(s.time for s, a in zip(shots, annotations) if a[0]["fall_state"] != "upright")
    alarm = [e for e in events if e.kind == "person_down"]
    assert len(alarm) == 1 and alarm[0].media_time == pytest.approx(went_down + 6.0)
    # Cut at that frame, the clip still raises it.
    events, _, _ = play([s for s in shots if s.time <= went_down + 6.0 + 1e-9])
    assert "person_down" in kinds(events)
