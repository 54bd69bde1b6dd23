"""Which of its stream's zones (`streampose.geometry.zones`) a tracked person is in, for plugins.

A person's body point is the middle of their seen shoulders and hips (the torso: where a body
lies, whatever its limbs do), else the middle of their box; it is looked up in the frame's zones
in the order the graph lists them.
"""

from __future__ import annotations

import numpy as np

from streampose.frame import KEYPOINT_INDEX, Frame
from streampose.geometry.zones import Zone, zone_at

TORSO = [KEYPOINT_INDEX[n] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")]


def body_point(frame: Frame, i: int, min_confidence: float) -> np.ndarray:
    """(2,) normalised x, y (0..1 of the image's width and height) of person i's body point."""
    persons, size = frame.persons, np.array([frame.width, frame.height], np.float64)
    if persons.keypoints is not None:
        torso = persons.keypoints[i, TORSO].astype(np.float64)
        seen = (torso[:, 2] >= min_confidence) & np.all((torso[:, :2] >= 0) & (torso[:, :2] < size), axis=1)
        if seen.any():
            return torso[seen, :2].mean(axis=0) / size
    x1, y1, x2, y2 = persons.boxes[i].astype(np.float64)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2]) / size


def person_zone(frame: Frame, i: int, min_confidence: float) -> Zone | None:
    """The first of the frame's zones containing person i's body point, or None."""
    return zone_at(frame.zones, body_point(frame, i, min_confidence)) if frame.zones else None
