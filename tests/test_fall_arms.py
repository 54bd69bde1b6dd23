"""Held up on both straight arms is not lying on the floor: a burpee's plank, a push-up or all
fours confirms no fall; a fall is confirmed once the arms give way; the long lie still counts."""

from __future__ import annotations

import numpy as np

from test_fall import CONFIRM_S, STANDING, Shot, blend, kinds, play, times

# A high plank seen from the side, facing left (COCO joints, (sideways offset, height above the
# floor) in body heights, Winter's proportions): both wrists on the floor straight under the
# shoulders (a whole arm, 0.33 long), the body a straight line from the shoulders to the toes.
PLANK = np.array([
    (-0.12, 0.36), (-0.11, 0.37), (-0.11, 0.37), (-0.07, 0.36), (-0.07, 0.36),
    (0.0, 0.33), (0.01, 0.33), (0.0, 0.142), (0.01, 0.142), (0.0, 0.0), (0.01, 0.0),
    (0.27, 0.23), (0.28, 0.23), (0.50, 0.145), (0.51, 0.145), (0.73, 0.06), (0.74, 0.06),
])
# Lying face down where the plank was: the arms folded beside the head, the body on the floor.
PRONE = np.array([
    (-0.12, 0.06), (-0.11, 0.07), (-0.11, 0.07), (-0.07, 0.06), (-0.07, 0.06),
    (0.0, 0.05), (0.01, 0.05), (-0.12, 0.02), (-0.11, 0.02), (-0.25, 0.02), (-0.24, 0.02),
    (0.29, 0.05), (0.30, 0.05), (0.53, 0.04), (0.54, 0.04), (0.78, 0.03), (0.79, 0.03),
])


def burpee(t: float, down_at: float = 2.0, held_s: float = 1.2) -> np.ndarray:
    """Standing, down to a plank in 0.4 s, held `held_s`, up again in 0.4 s."""
    if t < down_at:
        return STANDING
    if t < down_at + 0.4:
        return blend(STANDING, PLANK, (t - down_at) / 0.4)
    if t < down_at + 0.4 + held_s:
        return PLANK
    return blend(PLANK, STANDING, min((t - down_at - 0.4 - held_s) / 0.4, 1.0))


def test_a_burpee_plank_held_longer_than_confirm_s_is_no_fall():
    """reps_burpees_side_studio: the first burpee drops as fast as a fall and holds the plank 0.6-1.2 s,
    longer than confirm_s; held up on both straight arms it is no fall. Before, fall_confirmed."""
    events, annotations, _ = play([Shot(t, [(1, burpee(t), 0.0)]) for t in times(25, 0, 6)])
    assert "fall_started" in kinds(events)     # as fast and as low as a fall...
    assert "fall_confirmed" not in kinds(events)
    assert annotations[-1][0]["fall_state"] == "upright"
    # With the rule off, it is the alarm it was.
    events, _, _ = play([Shot(t, [(1, burpee(t), 0.0)]) for t in times(25, 0, 6)],
                        params={"held_up_wrist_drop": 0})
    assert "fall_confirmed" in kinds(events)


def test_a_fall_onto_the_hands_is_confirmed_once_the_arms_give_way():
    """Down fast onto straight arms (caught on the hands), held 2 s, then flat on the floor: confirmed
    confirm_s after the arms gave way, not while they held the body up."""
    def pose(t):
        if t < 2.0:
            return STANDING
        if t < 2.4:
            return blend(STANDING, PLANK, (t - 2.0) / 0.4)
        return PLANK if t < 4.4 else blend(PLANK, PRONE, min((t - 4.4) / 0.2, 1.0))

    events, _, _ = play([Shot(t, [(1, pose(t), 0.0)]) for t in times(25, 0, 8)])
    confirmed = [e for e in events if e.kind == "fall_confirmed"]
    assert len(confirmed) == 1 and 4.4 + CONFIRM_S - 0.05 <= confirmed[0].media_time <= 4.4 + CONFIRM_S + 0.3


def test_on_all_fours_for_down_alarm_s_is_still_a_long_lie():
    """Someone who went down onto their hands and cannot get up: no fall_confirmed while held up,
    but person_down after down_alarm_s, as for anyone down that long."""
    shots = [Shot(t, [(1, burpee(t, held_s=10.0), 0.0)]) for t in times(10, 0, 10)]
    events, _, _ = play(shots, params={"down_alarm_s": 6})
    assert kinds(events) == ["fall_started", "person_down"]
