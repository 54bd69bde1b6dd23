"""The fall plugin's body height after a fall: the height the person stood at, whatever the
segments measured on the floor say, until they are on their feet again."""

from __future__ import annotations

import numpy as np

from test_fall import STANDING, View, tipped
from streampose.plugins.fall import FallDetector, FallTrack, Sample, observe


def long_limbed(pose: np.ndarray, factor: float) -> np.ndarray:
    """The pose with every arm and leg segment `factor` times as long (limbs lifted or folded
    towards the camera, joints misplaced on the floor: segments that imply a taller body)."""
    out = pose.copy()
    for shoulder_or_hip, middle, end in ((5, 7, 9), (6, 8, 10), (11, 13, 15), (12, 14, 16)):
        out[middle] = out[shoulder_or_hip] + factor * (pose[middle] - pose[shoulder_or_hip])
        out[end] = out[middle] + factor * (pose[end] - pose[middle])
    return out


def height_after(state_name: str, view: View = View()) -> float:
    """The track's body height after 5 s of a stretched-limbed body on the floor that does not
    read down, having stood `view.body_px` tall, with the track in `state_name`."""
    detector = FallDetector(FallDetector.Params())
    state = FallTrack(state=state_name)
    standing = observe(view.keypoints(STANDING), view.box(STANDING), (0, 0, view.width, view.height), 0.3, 0.01)
    state.height = detector._body_height(state, 0.0, standing)
    state.reference = Sample(0.0, True, np.zeros(4), view.floor_y, True, np.full((2, 3), np.nan), state.height)
    on_the_floor = long_limbed(tipped(90), 2.5)
    for now in np.arange(0.1, 5.0, 0.1):
        obs = observe(view.keypoints(on_the_floor), view.box(on_the_floor), (0, 0, view.width, view.height), 0.3, 0.01)
        height = detector._body_height(state, float(now), obs)
    return height


def test_after_a_fall_the_body_keeps_the_height_it_stood_at():
    """rollerblader_slides_down_pole: 107 px standing, the estimates grew to 273 px while he sat on
    the asphalt, not flagged down, and in those body heights he read upright (fall_recovered)."""
    assert abs(height_after("fallen") - 300) < 5
    # Without a fall, estimates taken while not down are the height (someone bending over, walking
    # towards the camera): the memory follows them.
    assert height_after("upright") > 500


def test_a_box_at_the_edge_of_a_letterboxed_picture_is_cut_there():
    # Black bars above and below the picture, the upper one ending at the box's top row: the
    # box touches the picture's top edge, so neither its height, centre, top nor aspect is used
    # (vision/bars.py finds the bars); in a picture that fills the frame the same box is whole.
    view = View()
    keypoints, box = view.keypoints(STANDING), view.box(STANDING)
    top = int(box[1])
    letterboxed = observe(keypoints, box, (0, top, view.width, view.height - top), 0.3, 0.01)
    assert np.isnan([letterboxed.box_top_y, letterboxed.box_centre_y, letterboxed.box_height,
                     letterboxed.aspect]).all()
    whole = observe(keypoints, box, (0, 0, view.width, view.height), 0.3, 0.01)
    assert np.isfinite([whole.box_top_y, whole.box_centre_y, whole.box_height, whole.aspect]).all()
