"""Drawing on real frames: people found by the real models in shared images and videos."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from conftest import IMAGES, MODELS, VIDEOS
from streampose.frame import KEYPOINT_INDEX, Frame
from streampose.graph import schema
from streampose.graph.loader import load_graph
from streampose.runtime.stage import StageContext
from streampose.sinks.draw import (ALARM_COLOUR, LEFT_COLOUR, RIGHT_COLOUR, TextStyle, describe, draw_frame,
                                   person_labels, place_labels, track_colour)
from streampose.stages import STAGE_CLASSES
from streampose.stages.detector import DetectorStage
from streampose.stages.keypoints import KeypointStage

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pose():
    """Detects people and their keypoints in a shared image: name -> Frame."""
    context = StageContext(graph_dir=Path("."), output_dir=Path("."), model_paths=[MODELS])
    detector = DetectorStage("d", schema.Detector(id="d", type="detector", model="picodet_s_192_pedestrian"), context)
    keypoints = KeypointStage("k", schema.Keypoints(id="k", type="keypoints", model="tinypose_256x192_ov"), context)

    def run(name: str) -> Frame:
        frame = Frame(name, 0, cv2.imread(str(IMAGES / name)), 0.0, 0.0)
        detector.run([frame])
        keypoints.run([frame])
        return frame

    yield run
    detector.close()
    keypoints.close()


def nearest_colour_distance(image: np.ndarray, point: np.ndarray, colour: tuple[int, int, int]) -> float:
    """Distance from `colour` of the closest pixel within 1 pixel of `point` (x, y)."""
    x, y = np.round(point).astype(int)
    patch = image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).astype(float)
    return float(np.linalg.norm(patch - colour, axis=1).min())


def test_the_persons_left_and_right_limbs_are_drawn_in_their_side_colours(pose):
    frame = pose("hrnet_demo.jpg")
    [keypoints] = frame.persons.keypoints
    drawn = draw_frame(frame)
    for side, colour, other in (("left", LEFT_COLOUR, RIGHT_COLOUR), ("right", RIGHT_COLOUR, LEFT_COLOUR)):
        for bone in (("shoulder", "elbow"), ("elbow", "wrist")):
            a, b = (KEYPOINT_INDEX[f"{side}_{joint}"] for joint in bone)
            assert min(keypoints[a, 2], keypoints[b, 2]) >= 0.5, "the test needs confident arms"
            middle = (keypoints[a, :2] + keypoints[b, :2]) / 2
            assert nearest_colour_distance(drawn, middle, colour) < 40, (side, bone)
            assert nearest_colour_distance(drawn, middle, other) > 150, (side, bone)


def test_a_low_score_person_is_drawn_weaker_than_a_high_score_one(pose):
    frame = pose("hrnet_demo.jpg")
    assert frame.persons.scores[0] > 0.9
    x1, y1, x2, y2 = frame.persons.boxes[0].astype(int)

    def ink() -> float:  # how far the drawing moved the person's pixels from the picture
        drawn = draw_frame(frame)[y1:y2, x1:x2].astype(int)
        return float(np.abs(drawn - frame.image[y1:y2, x1:x2]).sum())

    confident = ink()
    frame.persons.scores[0] = 0.3
    frame.changed()  # as the runtime does after a stage changes a frame: the drawn layer is stale
    doubtful = ink()
    assert 0.25 * confident < doubtful < 0.6 * confident  # weaker, but still plain to see


def test_crowd_labels_stay_inside_the_frame_and_off_each_other(pose):
    frame = pose("coco_000000570688.jpg")
    persons = frame.persons
    assert len(persons) >= 15
    persons.track_ids[:] = np.arange(len(persons)) + 1
    # Long labels, the hardest case: every person fallen and counting squats.
    persons.annotations = [{"fall_state": "fallen", "fall_score": 0.99, "exercise": "squat", "reps": 12}
                           for _ in range(len(persons))]
    labels = person_labels(persons)
    rects = place_labels(persons.boxes, labels, frame.image.shape, TextStyle.for_image(frame.image))
    height, width = frame.image.shape[:2]
    for x1, y1, x2, y2 in rects:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    for a, b in itertools.combinations(rects, 2):
        assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)


def test_plugin_annotations_read_as_words():
    assert [p.text for p in describe({"fall_score": 0.987, "fall_state": "fallen"})] == ["FALLEN 0.99"]
    assert describe({"fall_score": 0.987, "fall_state": "fallen"})[0].colour == ALARM_COLOUR
    assert describe({"fall_score": 0.02, "fall_state": "upright", "hand_raised": False}) == []
    assert [p.text for p in describe({"exercise": "squat", "reps": 3})] == ["squats 3"]
    assert [p.text for p in describe({"exercise": "push_up", "reps": 1})] == ["push-ups 1"]
    assert [p.text for p in describe({"exercise": "jumping_jack", "reps": 7})] == ["jumping jacks 7"]
    assert [p.text for p in describe({"hand_raised": True})] == ["hand raised"]
    assert [p.text for p in describe({"fall_state": "down", "fall_score": 0.3})] == ["down"]
    assert [p.text for p in describe({"my_plugin_level": 0.5, "my_flag": True})] == ["my plugin level 0.50",
                                                                                      "my flag"]


def test_a_fall_in_a_real_video_is_labelled_fallen_in_the_alarm_colour():
    context = StageContext(graph_dir=REPO / "graphs", output_dir=Path("."), model_paths=[MODELS], streams=["fall"])
    stages = [STAGE_CLASSES[s.type](s.id, s, context) for s in load_graph(REPO / "graphs" / "demo.yml").spec.stages
              if s.type in ("detector", "keypoints", "tracker", "smoother", "plugin")]
    try:
        with av.open(str(VIDEOS / "fall_faint_studio_1280x720.mp4")) as container:
            for index, decoded in enumerate(container.decode(video=0)):
                frame = Frame("fall", index, decoded.to_ndarray(format="bgr24"), 0.0, float(decoded.time))
                for stage in stages:
                    stage.run([frame])
    finally:
        for stage in stages:
            stage.close()
    [label] = person_labels(frame.persons)
    assert label.text.startswith("#1 FALLEN 0.9"), label
    assert label.background == ALARM_COLOUR


def test_track_colours_are_stable_distinct_and_never_alarm_red():
    colours = [track_colour(i) for i in range(1, 41)]
    assert colours == [track_colour(i) for i in range(1, 41)]
    hues = [cv2.cvtColor(np.uint8([[c]]), cv2.COLOR_BGR2HSV_FULL)[0, 0, 0].item() * 360 / 256 for c in colours]
    assert all(20 <= h <= 330 for h in hues)  # red is for alarms
    gaps = [min(abs(a - b), 360 - abs(a - b)) for a, b in zip(hues, hues[1:])]
    assert min(gaps) > 60  # consecutive ids, usually in one scene together, differ clearly
    assert len(set(colours)) == len(colours)


def test_a_frame_is_drawn_once_for_every_sink_and_each_sink_sees_what_it_drew_alone(pose):
    """Recorder (overlay, banners) and clips (neither) share the frame's drawn layer; each gets
    exactly the image it would get drawing the frame by itself, in either order."""
    import copy

    from streampose.frame import Event

    posed = pose("hrnet_demo.jpg")
    assert len(posed.persons) >= 1
    banners = [Event("fall_confirmed", posed.stream, 1, 0.0, 0.0, score=0.9)]
    overlay = {"fps": 9.9, "latency": "42 ms"}
    alone_recorder = draw_frame(copy.copy(posed), overlay, banners)
    alone_clips = draw_frame(copy.copy(posed))
    assert (alone_recorder != alone_clips).any()  # the banner and overlay are the recorder's own
    shared = copy.copy(posed)
    assert shared.drawn is None
    np.testing.assert_array_equal(draw_frame(shared), alone_clips)
    layer = shared.drawn
    np.testing.assert_array_equal(draw_frame(shared, overlay, banners), alone_recorder)
    assert shared.drawn is layer and not layer[0].flags.writeable  # drawn once, and nobody draws on it
    assert (layer[0] != posed.image).any()
    shared.changed()  # a stage changed the frame: drawn again
    assert shared.drawn is None
