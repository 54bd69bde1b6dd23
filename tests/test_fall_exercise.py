"""The fall plugin's exercise memory: going down and being on one's feet again within
exercise_cycle_s (burpees, floor dance moves) is exercise, and no fall starts for
exercise_memory_s after; a fall later than that is caught again."""

from __future__ import annotations

from test_fall import STANDING, Shot, blend, fall_angle, kinds, play, times, tipped

LYING = tipped(90)


def burpees(reps: int, start: float = 2.0, period: float = 3.0) -> list[Shot]:
    """Standing until `start`, then `reps` burpees: down to lying in 0.4 s (as fast as a fall),
    1.2 s on the floor, up in 0.6 s, 0.8 s standing; 10 fps, to `start` + reps * period + 1 s."""
    def pose(t):
        phase = (t - start) % period if start <= t < start + reps * period else period
        if phase < 0.4:
            return tipped(fall_angle(phase, 0.0, 0.4))
        if phase < 1.6:
            return LYING
        if phase < 2.2:
            return blend(LYING, STANDING, (phase - 1.6) / 0.6)
        return STANDING

    return [Shot(t, [(1, pose(t), 0.0)]) for t in times(10, 0, start + reps * period + 1)]


def test_repeated_quick_downs_and_ups_are_exercise():
    """Each burpee drops like a fall and lies longer than confirm_s: the first is an alarm (nothing
    tells it from a fall at the time), the next four are exercise."""
    events, _, _ = play(burpees(5), params={"down_alarm_s": 0})
    assert kinds(events) == ["fall_started", "fall_confirmed", "fall_recovered"]
    assert events[1].media_time < 2.0 + 3.0

    events, _, _ = play(burpees(5), params={"down_alarm_s": 0, "exercise_cycle_s": 0})
    assert kinds(events).count("fall_confirmed") > 1


def test_a_fall_after_the_exercise_memory_is_caught():
    shots = burpees(2)                                   # last rep on its feet at 7.2 s
    end = shots[-1].time
    shots += [Shot(t, [(1, tipped(fall_angle(t, 20.0, 0.6)), 0.0)]) for t in times(10, end + 0.1, 24)]
    events, _, _ = play(shots, params={"down_alarm_s": 0, "exercise_memory_s": 10})
    confirmed = [e.media_time for e in events if e.kind == "fall_confirmed"]
    assert len(confirmed) == 2 and 20.6 <= confirmed[-1] <= 20.6 + 1.5

    # Within the memory (the last rep on its feet at 7.0 s + 15 s) the fall starts nothing; a
    # person still down when it ends is confirmed then, while the drop is within descent_max_s.
    events, _, _ = play(shots, params={"down_alarm_s": 0, "exercise_memory_s": 15})
    assert [e.kind for e in events if 19 < e.media_time < 22.0] == []


def test_a_posture_flicker_is_no_exercise():
    """Read as lying for one frame (a bad pose) and upright again: no cycle, the fall after it counts."""
    shots = [Shot(t, [(1, LYING if abs(t - 1.5) < 0.05 else tipped(fall_angle(t, 2.5, 0.6)), 0.0)])
             for t in times(10, 0, 5)]
    events, _, _ = play(shots, params={"down_alarm_s": 0})
    confirmed = [e.media_time for e in events if e.kind == "fall_confirmed"]
    assert len(confirmed) == 1 and 3.1 + 0.5 <= confirmed[0] <= 3.1 + 1.5
