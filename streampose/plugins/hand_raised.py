"""The example plugin: a hand raised above the head.

A person's hand height is how far the higher wrist is above the head, in torso
lengths (mid-shoulders to mid-hips), so the thresholds mean the same for a
person near the camera and far from it. The head is the highest confident face
keypoint (nose, eyes, ears), which sits at about eye level; the top of the head
is roughly 0.2 torso lengths higher.

A hand counts as raised once its height stays at or above `margin` for `hold_s`
seconds, and as lowered once the height drops below `release_margin`: the gap
between the two thresholds (hysteresis) and the hold keep keypoint jitter from
raising one event per frame. One `hand_raised` event is raised per raise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from streampose.frame import KEYPOINT_INDEX, Event, Frame
from streampose.plugins.base import Plugin, PluginParams, make_event

FACE = [KEYPOINT_INDEX[name] for name in ("nose", "left_eye", "right_eye", "left_ear", "right_ear")]
SHOULDERS = [KEYPOINT_INDEX["left_shoulder"], KEYPOINT_INDEX["right_shoulder"]]
HIPS = [KEYPOINT_INDEX["left_hip"], KEYPOINT_INDEX["right_hip"]]
WRISTS = [KEYPOINT_INDEX["left_wrist"], KEYPOINT_INDEX["right_wrist"]]
HANDS = ("left", "right")  # the person's own sides, in WRISTS order


@dataclass
class HandState:
    """One track's state: whether its hand is up, and since when its height has been above `margin`."""

    raised: bool = False
    above_since: float | None = None  # media time, seconds


class HandRaised(Plugin):
    """Annotates every tracked person with `hand_raised` (true/false) and raises a
    `hand_raised` event each time a hand goes up above the head."""

    class Params(PluginParams):
        margin: float = Field(0.2, ge=-1, le=2, description="A wrist this far above the head (eye level) counts "
                              "as raised, in torso lengths (mid-shoulders to mid-hips).")
        release_margin: float = Field(0.0, ge=-2, le=2, description="The hand counts as lowered again when the "
                                      "higher wrist is less than this far above the head, in torso lengths; "
                                      "below `margin`.")
        hold_s: float = Field(0.1, ge=0, le=60, description="How long the wrist must stay above `margin` before "
                              "the raise counts, seconds of media time.")
        min_confidence: float = Field(0.3, ge=0, le=1, description="Keypoints less confident than this are "
                                      "ignored; without a confident wrist, face, shoulder and hip the state is "
                                      "kept as it was.")

        @model_validator(mode="after")
        def _hysteresis(self):
            if self.release_margin >= self.margin:
                raise ValueError(f"release_margin ({self.release_margin}) must be below margin ({self.margin})")
            return self

    params: Params

    def new_track(self) -> HandState:
        return HandState()

    def on_person(self, frame: Frame, i: int, state: HandState) -> list[Event]:
        if frame.persons.keypoints is None:
            raise ValueError("hand_raised needs keypoints: put a keypoints stage before this plugin")
        height, hand = self._hand_height(frame.persons.keypoints[i])
        events = []
        if height is None:
            state.above_since = None  # the hold must be seen unbroken
        elif state.raised:
            if height < self.params.release_margin:
                state.raised, state.above_since = False, None
        elif height >= self.params.margin:
            if state.above_since is None:
                state.above_since = frame.media_time
            if frame.media_time - state.above_since >= self.params.hold_s:
                state.raised = True
                events.append(make_event(frame, i, "hand_raised", hand=hand, height=round(height, 3)))
        else:
            state.above_since = None
        frame.persons.annotations[i]["hand_raised"] = state.raised
        return events

    def _hand_height(self, keypoints: np.ndarray) -> tuple[float | None, str]:
        """(height of the higher confident wrist above the head in torso lengths, "left" or "right"),
        or (None, "") when the keypoints needed are not confident. keypoints: (K, 3) x, y, confidence."""
        confident = keypoints[:, 2] >= self.params.min_confidence
        face, shoulders, hips, wrists = (confident[j] for j in (FACE, SHOULDERS, HIPS, WRISTS))
        if not (face.any() and shoulders.any() and hips.any() and wrists.any()):
            return None, ""
        xy = keypoints[:, :2]
        torso = np.linalg.norm(xy[SHOULDERS][shoulders].mean(axis=0) - xy[HIPS][hips].mean(axis=0))
        if torso < 1:
            return None, ""
        head_y = xy[FACE, 1][face].min()
        heights = np.where(wrists, (head_y - xy[WRISTS, 1]) / torso, -np.inf)  # image y grows downwards
        best = int(np.argmax(heights))
        return float(heights[best]), HANDS[best]
