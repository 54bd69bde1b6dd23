"""The fall plugin's upright reference: a drop is measured from before it, even when the few cues
left after it read upright (legs cut by the frame edge, torso up)."""

from __future__ import annotations

import numpy as np

from test_fall import ON_THE_FLOOR, STANDING, Shot, View, blend, kinds, play, times

# Feet near the bottom edge: the box touches it, so legs and box cues are left out (cut), and
# only the torso and the head are measured, as for a person close to a portrait camera.
LOW_VIEW = View(height=480, floor_y=470.0)


def sitting_down_on_the_floor(duration_s: float) -> list[Shot]:
    """Standing until 2 s, then down to sitting on the floor (torso upright) over `duration_s`,
    sitting to 12 s; 10 fps."""
    return [Shot(t, [(1, blend(STANDING, ON_THE_FLOOR, float(np.clip((t - 2) / duration_s, 0, 1))), 0.0)])
            for t in times(10, 0, 12)]


def test_a_fast_drop_to_the_floor_reads_down_though_the_torso_stays_up():
    """Thrown onto the floor in 0.4 s: the torso and head cues read upright all along, but the body
    is half a body height below where it stood, so it is down: the fall is confirmed (and the long
    lie raised). Before, every frame after the drop became the upright reference and the drop
    from it read nothing."""
    events, annotations, _ = play(sitting_down_on_the_floor(0.4), LOW_VIEW, params={"down_alarm_s": 6})
    assert kinds(events) == ["fall_started", "fall_confirmed", "person_down"]
    assert 2.4 <= events[1].media_time <= 2.4 + 1.5
    assert annotations[-1][0]["fall_state"] == "fallen"


def test_sitting_down_on_the_floor_slowly_is_no_fall():
    events, _, _ = play(sitting_down_on_the_floor(2.5), LOW_VIEW, params={"down_alarm_s": 0})
    assert events == []
