"""The smoother stage: jitter, step response, track separation, gaps, confidence, state lifetime,
on synthetic trajectories and on real keypoints from the real models."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from conftest import MODELS, VIDEOS
from streampose.frame import NUM_KEYPOINTS, UNTRACKED, Frame, Persons, StreamEvent
from streampose.graph import schema
from streampose.runtime.stage import StageContext
from streampose.smoothing import EMA_REFERENCE_FPS
from streampose.stages.detector import DetectorStage
from streampose.stages.keypoints import KeypointStage
from streampose.stages.smoother import SmootherStage
from streampose.stages.tracker import TrackerStage

FPS = 30.0
BOX_SIZE = np.array([80.0, 237.0])          # a person's box, pixels: diagonal 250
PERSON_SIZE = float(np.hypot(*BOX_SIZE))
# Joints spread over the box, so each has its own position; the filters must keep them apart.
LAYOUT = np.random.default_rng(7).uniform([-40, -118], [40, 118], (NUM_KEYPOINTS, 2))
IMAGE = np.zeros((4, 4, 3), np.uint8)


def smoother(**params) -> SmootherStage:
    spec = schema.Smoother(id="smooth", type="smoother", **params)
    return SmootherStage("smooth", spec, StageContext(graph_dir=Path("."), output_dir=Path(".")))


def make_frame(time: float, centres: dict[int, np.ndarray], noise: dict[int, np.ndarray] | None = None,
               confidence: dict[int, np.ndarray] | None = None, stream: str = "s",
               kpts3d: dict[int, np.ndarray] | None = None) -> Frame:
    """A frame with one person per track id in `centres` ((2,) pixel centre of the skeleton);
    noise: per id (K, 2) pixels added to the joints; confidence: per id (K,)."""
    ids = list(centres)
    boxes = np.array([[*(centres[i] - BOX_SIZE / 2), *(centres[i] + BOX_SIZE / 2)] for i in ids])
    persons = Persons.from_boxes(boxes, np.ones(len(ids)))
    persons.track_ids = np.array(ids, np.int64)
    keypoints = np.ones((len(ids), NUM_KEYPOINTS, 3), np.float32)
    for row, i in enumerate(ids):
        keypoints[row, :, :2] = centres[i] + LAYOUT + (0 if noise is None else noise[i])
        if confidence is not None and i in confidence:
            keypoints[row, :, 2] = confidence[i]
    persons.keypoints = keypoints
    persons.pose_scores = keypoints[..., 2].mean(axis=1)
    if kpts3d is not None:
        persons.kpts3d = np.stack([kpts3d[i] for i in ids]).astype(np.float32)
    return Frame(stream=stream, index=round(time * FPS), image=IMAGE, capture_time=time, media_time=time,
                 persons=persons)


def run(stage: SmootherStage, frames: list[Frame]) -> list[Frame]:
    for frame in frames:
        stage.run([frame])
    return frames


def joints_of(frames: list[Frame], track_id: int) -> np.ndarray:
    """(T, K, 3) keypoints of one track over the frames."""
    return np.stack([f.persons.keypoints[list(f.persons.track_ids).index(track_id)] for f in frames])


def jitter(xy: np.ndarray) -> float:
    """Mean absolute second difference over time (axis 0), pixels."""
    return float(np.abs(np.diff(xy, 2, axis=0)).mean())


def slow_motion(times: np.ndarray) -> np.ndarray:
    """(T, 2) a skeleton centre circling 30 px around (300, 200) every 4 s: at most 47 px/s."""
    phase = 2 * np.pi * 0.25 * times
    return np.stack([300 + 30 * np.sin(phase), 200 + 30 * np.cos(phase)], axis=1)


def frames_to_reach(smoothed: np.ndarray, times: np.ndarray, start: int, target: float) -> float:
    """Seconds from frame `start` until `smoothed` ((T,) values) first reaches `target`."""
    reached = np.flatnonzero(smoothed[start:] >= target)
    assert len(reached), "never reached"
    return float(times[start + reached[0]] - times[start])


# ------------------------------------------------------------------------- defaults: jitter vs step

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_defaults_cut_jitter_by_70_percent(seed):
    rng = np.random.default_rng(seed)
    times = np.arange(300) / FPS
    centres = slow_motion(times)
    noise = rng.normal(0, 3.0, (len(times), NUM_KEYPOINTS, 2))
    raw = [make_frame(t, {5: c}, {5: n}) for t, c, n in zip(times, centres, noise)]
    raw_xy = joints_of(raw, 5)[..., :2].copy()
    smoothed = joints_of(run(smoother(), raw), 5)
    settled = slice(30, None)                          # after the first second
    reduction = 1 - jitter(smoothed[settled, :, :2]) / jitter(raw_xy[settled])
    assert reduction >= 0.70, f"jitter fell by only {reduction:.0%}"
    # Smoothing must not buy that with lag: the smoothed joints stay closer to the truth than the raw.
    truth = centres[:, None, :] + LAYOUT
    assert np.abs(smoothed[settled, :, :2] - truth[settled]).mean() < np.abs(raw_xy - truth)[settled].mean()
    assert np.all(smoothed[..., 2] == 1)


@pytest.mark.parametrize("seed, sigma", [(0, 0.0), (0, 3.0), (1, 3.0), (2, 3.0)])
def test_defaults_follow_a_step_within_100_ms(seed, sigma):
    """A 40 px jump (0.16 person sizes, e.g. a wrist flicking), on top of `sigma` px noise."""
    rng = np.random.default_rng(seed)
    times = np.arange(60) / FPS
    step = 40.0
    centres = np.tile([300.0, 200.0], (len(times), 1))
    centres[30:, 0] += step
    noise = rng.normal(0, sigma, (len(times), NUM_KEYPOINTS, 2))
    frames = run(smoother(), [make_frame(t, {1: c}, {1: n}) for t, c, n in zip(times, centres, noise)])
    # The mean over joints removes most noise, leaving the filter's response.
    x = joints_of(frames, 1)[:, :, 0].mean(axis=1) - LAYOUT[:, 0].mean()
    assert frames_to_reach(x, times, 30, 300 + 0.9 * step) <= 0.1 + 1e-9
    assert x[29] < 300 + 0.1 * step                    # and it did not move before the step


def test_3d_joints_smoothed_in_metres_at_defaults():
    """The pixel case scaled to a 1.8 m person: 2.2 cm noise, a 0.29 m step."""
    rng = np.random.default_rng(3)
    metres_per_px = 1.8 / PERSON_SIZE
    times = np.arange(330) / FPS
    truth = np.zeros((len(times), NUM_KEYPOINTS, 3))
    truth[:300, :, :2] = (slow_motion(times[:300])[:, None, :] + LAYOUT) * metres_per_px
    truth[:, :, 2] = 3.0
    truth[300:, :, :2] = truth[299, :, :2] + [40 * metres_per_px, 0]
    noisy = truth + rng.normal(0, 3.0 * metres_per_px, truth.shape)
    kpts3d = np.concatenate([noisy, np.ones((len(times), NUM_KEYPOINTS, 1))], axis=2)
    frames = run(smoother(), [make_frame(t, {2: np.array([300.0, 200.0])}, kpts3d={2: k})
                              for t, k in zip(times, kpts3d)])
    smoothed = np.stack([f.persons.kpts3d[0] for f in frames])
    assert smoothed.dtype == np.float32
    reduction = 1 - jitter(smoothed[30:300, :, :3]) / jitter(noisy[30:300])
    assert reduction >= 0.70, f"jitter fell by only {reduction:.0%}"
    x = smoothed[:, :, 0].mean(axis=1)
    start, step = truth[299, :, 0].mean(), 40 * metres_per_px
    assert frames_to_reach(x, times, 300, start + 0.9 * step) <= 0.1 + 1e-9


def test_near_and_far_people_are_smoothed_alike():
    """The same motion and noise three times larger (a person nearer the camera) comes out
    three times larger: the pixel filter measures speed in person sizes."""
    rng = np.random.default_rng(8)
    times = np.arange(90) / FPS
    centres = slow_motion(times)
    centres[45:, 0] += 40
    noise = rng.normal(0, 3.0, (len(times), NUM_KEYPOINTS, 2))
    far = [make_frame(t, {1: c}, {1: n}) for t, c, n in zip(times, centres, noise)]
    near = [make_frame(t, {1: c}, {1: n}) for t, c, n in zip(times, centres, noise)]
    for frame in near:
        frame.persons.boxes *= 3
        frame.persons.keypoints[..., :2] *= 3
    run(smoother(), far)
    run(smoother(), near)
    np.testing.assert_allclose(joints_of(near, 1)[..., :2], 3 * joints_of(far, 1)[..., :2], rtol=1e-5)


def test_ema_weights_follow_the_time_step():
    alpha = 0.4
    stage = smoother(filter="ema", pixels={"alpha": alpha})
    first = run(stage, [make_frame(0.0, {1: np.array([100.0, 100.0])})])[0]
    # A 10 px move seen one frame later, then (a frame dropped) two frames later.
    one = run(stage, [make_frame(1 / FPS, {1: np.array([110.0, 100.0])})])[0]
    two = run(stage, [make_frame(3 / FPS, {1: np.array([120.0, 100.0])})])[0]
    x0, x1, x2 = (f.persons.keypoints[0, :, 0] - LAYOUT[:, 0] for f in (first, one, two))
    np.testing.assert_allclose(x0, 100, rtol=1e-6)
    np.testing.assert_allclose(x1, 100 + alpha * 10, rtol=1e-6)
    weight = 1 - (1 - alpha) ** (2 / FPS * EMA_REFERENCE_FPS)
    np.testing.assert_allclose(x2, x1 + weight * (120 - x1), rtol=1e-6)


def test_irregular_timestamps_give_a_steady_lag():
    """A constant 100 px/s motion sampled at irregular times (dropped frames, variable fps):
    the smoothed joint trails the truth by nearly the same distance whatever the step."""
    rng = np.random.default_rng(4)
    times = np.cumsum(rng.choice([1 / 60, 1 / 30, 2 / 30, 3 / 30], 200))
    centres = np.stack([100 + 100 * times, np.full_like(times, 200)], axis=1)
    frames = run(smoother(), [make_frame(t, {1: c}) for t, c in zip(times, centres)])
    lag = centres[:, 0] - (joints_of(frames, 1)[:, 0, 0] - LAYOUT[0, 0])
    settled = lag[times > 1.0]
    # 0.33 here; 0.96 for the same filter fed frame counts / 30 as timestamps.
    assert settled.max() - settled.min() < 0.4 * settled.mean(), (settled.min(), settled.max())


# ------------------------------------------------------------------------- tracks and state

def test_tracks_never_mix():
    """Two people on different paths, in changing order in the persons arrays, one of them
    missing from every fifth frame, plus an untracked one: each track comes out exactly as if
    it had been smoothed alone, and the untracked one unchanged."""
    rng = np.random.default_rng(5)
    times = np.arange(90) / FPS
    paths = {3: slow_motion(times), 8: slow_motion(times)[::-1] + [400, 50],
             UNTRACKED: np.tile([50.0, 50.0], (len(times), 1))}
    noise = {i: rng.normal(0, 3.0, (len(times), NUM_KEYPOINTS, 2)) for i in paths}
    orders = ([3, 8, UNTRACKED], [UNTRACKED, 8, 3], [8, UNTRACKED, 3])
    present = {i: np.ones(len(times), bool) for i in paths}
    present[3][4::5] = False
    both = []
    for k, t in enumerate(times):
        order = [i for i in orders[k % 3] if present[i][k]]
        both.append(make_frame(t, {i: paths[i][k] for i in order}, {i: noise[i][k] for i in order}))
    raw_strays = joints_of(both, UNTRACKED).copy()
    run(smoother(), both)
    for i in (3, 8):
        seen = np.flatnonzero(present[i])
        alone = run(smoother(), [make_frame(times[k], {i: paths[i][k]}, {i: noise[i][k]}) for k in seen])
        np.testing.assert_array_equal(joints_of([both[k] for k in seen], i), joints_of(alone, i))
    np.testing.assert_array_equal(joints_of(both, UNTRACKED), raw_strays)


def test_gap_in_timestamps_restarts_without_a_jump():
    rng = np.random.default_rng(6)
    before = np.arange(60) / FPS
    after = 3.0 + np.arange(30) / FPS                  # 1 s missing: longer than reset_gap_s 0.5
    times = np.concatenate([before, after])
    centres = np.stack([300 + 60 * times, np.full_like(times, 200)], axis=1)   # moved 60 px meanwhile
    noise = rng.normal(0, 1.0, (len(times), NUM_KEYPOINTS, 2))
    raw = [make_frame(t, {1: c}, {1: n}) for t, c, n in zip(times, centres, noise)]
    first_after = raw[60].persons.keypoints.copy()
    smoothed = joints_of(run(smoother(), raw), 1)
    # Restarted at the new observation, not pulled from the stale position...
    np.testing.assert_array_equal(smoothed[60], first_after[0])
    # ...and the frames after it move as smoothly as before the gap (no velocity spike).
    assert jitter(smoothed[60:, :, :2]) < 1.5 * jitter(smoothed[30:60, :, :2])
    # A shorter gap (two dropped frames) does not restart it.
    short = [make_frame(t, {1: c}, {1: n}) for t, c, n in zip(times[[0, 1, 4]], centres[[0, 1, 4]], noise[:3])]
    last_raw = short[2].persons.keypoints[0].copy()
    assert np.abs(joints_of(run(smoother(), short), 1)[2] - last_raw)[:, 0].mean() > 0.5
    # Time running backwards (timestamps reset without a stream event) restarts too, and a
    # low-confidence joint is then not held with a confidence grown past 1.
    stage = smoother()
    run(stage, [make_frame(10.0 + k / FPS, {1: centres[k]}, {1: noise[k]}) for k in range(10)])
    unsure = np.full(NUM_KEYPOINTS, 0.9)
    unsure[0] = 0.1
    back = make_frame(1.0, {1: centres[10]}, {1: noise[10]}, {1: unsure})
    raw_back = back.persons.keypoints.copy()
    run(stage, [back])
    np.testing.assert_array_equal(back.persons.keypoints, raw_back)


def test_low_confidence_joints_do_not_drag():
    times = np.arange(60) / FPS
    wrist, half_life = 9, 0.1
    stage = smoother(hold_half_life_s=half_life)
    centre = np.array([300.0, 200.0])
    frames = []
    for k, t in enumerate(times):
        noise = np.zeros((NUM_KEYPOINTS, 2))
        confidence = np.full(NUM_KEYPOINTS, 0.9)
        if 20 <= k < 40:                                   # a wrong, unsure peak far away
            noise[wrist] = [150.0, -80.0]
            confidence[wrist] = 0.1
        frames.append(make_frame(t, {1: centre}, {1: noise}, {1: confidence}))
    smoothed = joints_of(run(stage, frames), 1)
    truth = centre + LAYOUT[wrist]
    np.testing.assert_allclose(smoothed[:20, wrist, :2], np.tile(truth, (20, 1)), atol=1e-4)
    expected = 0.9 * 2.0 ** (-(times[20:40] - times[19]) / half_life)
    held = expected > 0.1
    assert 5 < held.sum() < 20
    assert (times[20:40] - times[19])[held].max() < 0.5    # reset_gap_s: longer holds end anyway
    # Held where it was, its confidence decaying...
    np.testing.assert_allclose(smoothed[20:40][held, wrist, :2], np.tile(truth, (held.sum(), 1)), atol=1e-4)
    np.testing.assert_allclose(smoothed[20:40][held, wrist, 2], expected[held], rtol=1e-5)
    # ...until that falls below the joint's own confidence: then the raw joint passes through.
    np.testing.assert_allclose(smoothed[20:40][~held, wrist, :2], np.tile(truth + [150, -80], ((~held).sum(), 1)),
                               atol=1e-4)
    np.testing.assert_allclose(smoothed[20:40][~held, wrist, 2], 0.1)
    # Back to normal, never dragged towards the wrong peak; the other joints never touched.
    np.testing.assert_allclose(smoothed[40:, wrist, :2], np.tile(truth, (20, 1)), atol=1e-4)
    others = np.delete(np.arange(NUM_KEYPOINTS), wrist)
    np.testing.assert_allclose(smoothed[:, others, 2], 0.9)
    np.testing.assert_allclose(frames[25].persons.pose_scores[0], smoothed[25, :, 2].mean(), rtol=1e-6)


def test_state_freed_on_ended_tracks_and_stream_events():
    stage = smoother()
    here = np.array([100.0, 100.0])

    clock = iter(np.arange(100) / FPS)

    def moved_to(point, **frame_args):
        """Process a frame where tracks 1 and 2 jumped to `point`; returns how far each came
        out short of it in x (a continuing track lags, a fresh one starts at the observation)."""
        frame = run(stage, [make_frame(next(clock), {1: point, 2: point + [0, 50]}, **frame_args)])[0]
        return {i: frame.persons.keypoints[row, 0, 0] - LAYOUT[0, 0] - point[0]
                for row, i in enumerate(frame.persons.track_ids)}

    for _ in range(5):
        moved_to(here)
    frame = make_frame(next(clock), {2: here + [0, 50]})
    frame.ended_tracks = [1]
    run(stage, [frame])
    assert len(stage.tracks.live("s")) == 1
    shift = moved_to(here + [20, 0])
    assert shift[1] == pytest.approx(0, abs=1e-4)           # ended: starts afresh at the observation
    assert shift[2] < -1                                     # continuing: smoothed
    for kind, segment in (("lost", 0), ("ended", 0), ("opened", 1)):
        for _ in range(3):
            moved_to(here)
        stage.stream_event(StreamEvent("other", kind, segment))      # another stream: no effect
        assert moved_to(here + [20, 0])[2] < -1
        stage.stream_event(StreamEvent("s", kind, segment))
        assert stage.tracks.live("s") == {}
        assert all(v == pytest.approx(0, abs=1e-4) for v in moved_to(here).values())
    stage.stream_event(StreamEvent("s", "opened", 0))                # first opening: nothing to reset
    assert moved_to(here + [20, 0])[2] < -1


def test_state_is_bounded_and_keeps_the_recent_tracks():
    """A tracker that never ends its tracks: 2000 short-lived ids and one long one."""
    stage = smoother(max_tracks=8)
    rng = np.random.default_rng(9)
    for k in range(2000):
        centres = {0: np.array([300.0, 200.0]), 1000 + k: np.array([100.0, 100.0])}
        run(stage, [make_frame(k / FPS, centres, {i: rng.normal(0, 3, (NUM_KEYPOINTS, 2)) for i in centres})])
    assert len(stage.tracks.live("s")) == 8 and stage.tracks.peek("s", 0) is not None
    # The long track kept its state through all the evictions: still smoothed, not restarted.
    frame = make_frame(2000 / FPS, {0: np.array([300.0, 200.0])}, {0: np.full((NUM_KEYPOINTS, 2), 9.0)})
    observed = frame.persons.keypoints[0, :, :2].copy()
    run(stage, [frame])
    assert np.abs(frame.persons.keypoints[0, :, :2] - observed).mean() > 3
    # More tracked persons in one frame than max_tracks: the first max_tracks are smoothed, the rest pass.
    crowd = {i: np.array([10.0 * i, 100.0]) for i in range(20)}
    frame = make_frame(2001 / FPS, crowd)
    raw = frame.persons.keypoints.copy()
    run(stage, [frame])
    np.testing.assert_array_equal(frame.persons.keypoints[8:], raw[8:])
    assert len(stage.tracks.live("s")) == 8


def test_persons_without_keypoints_or_tracks_pass_through():
    stage = smoother()
    frame = make_frame(0.0, {UNTRACKED: np.array([100.0, 100.0])})
    before = frame.persons.keypoints
    run(stage, [frame])
    assert frame.persons.keypoints is before
    detections_only = Frame("s", 1, IMAGE, 0.0, 1 / FPS, persons=Persons.from_boxes(np.ones((1, 4)), np.ones(1)))
    detections_only.persons.track_ids[:] = 4
    run(stage, [detections_only])
    assert detections_only.persons.keypoints is None and detections_only.persons.kpts3d is None


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError, match="min_cutoff_hz"):
        schema.Smoother(id="s", type="smoother", pixels={"min_cutoff_hz": 0})
    with pytest.raises(ValueError, match="alpha"):
        schema.Smoother(id="s", type="smoother", metres={"alpha": 1.5})
    with pytest.raises(ValueError, match="cutoff"):
        schema.Smoother(id="s", type="smoother", pixels={"cutoff": 1})


# ------------------------------------------------------------------------- real keypoints

def test_real_keypoints_jitter_falls():
    """Detector, keypoint and tracker stages on the first 4 s of a real squat video: the
    smoothed joints of the tracked person jitter much less and stay close to the raw ones."""
    context = StageContext(graph_dir=Path("."), output_dir=Path("."), model_paths=[MODELS])
    detector = DetectorStage("d", schema.Detector(id="d", type="detector", model="picodet_s_192_pedestrian"), context)
    keypoints = KeypointStage("k", schema.Keypoints(id="k", type="keypoints", model="tinypose_128x96_ov"), context)
    tracker = TrackerStage("t", schema.TrackerParams(id="t", type="tracker"), context)
    stage = smoother()
    raw, smoothed = [], []
    with av.open(str(VIDEOS / "squat_side_view.mp4")) as container:
        for index, decoded in enumerate(container.decode(video=0)):
            if index == 120:
                break
            frame = Frame("squat", index, decoded.to_ndarray(format="bgr24"), 0.0, float(decoded.time))
            for pose_stage in (detector, keypoints, tracker):
                pose_stage.run([frame])
            if index >= 10:                                # the track is confirmed by then
                assert list(frame.persons.track_ids) == [1]
                raw.append(frame.persons.keypoints[0].copy())
            stage.run([frame])
            if index >= 10:
                smoothed.append(frame.persons.keypoints[0])
    detector.close()
    keypoints.close()
    raw, smoothed = np.stack(raw), np.stack(smoothed)
    confident = raw[..., 2] >= 0.3
    usable = confident[2:] & confident[1:-1] & confident[:-2]
    raw_jitter = np.abs(np.diff(raw[..., :2], 2, axis=0)).sum(-1)[usable].mean()
    smooth_jitter = np.abs(np.diff(smoothed[..., :2], 2, axis=0)).sum(-1)[usable].mean()
    print(f"squat, 110 frames: jitter {raw_jitter:.2f} -> {smooth_jitter:.2f} px")
    assert smooth_jitter < 0.5 * raw_jitter
    assert np.median(np.abs(smoothed - raw)[..., :2].sum(-1)[confident]) < 8
