"""Annotation of a frame for people watching: boxes, ids, skeletons, events, overlay.

Layout: event banners stack at the top-left, the fps/latency overlay sits at the
bottom-left, and the bottom-right corner is kept free for a 3D skeleton inset.
Sizes scale with the image so that annotations read the same at 320x240 and 1080p.
"""

from __future__ import annotations

import cv2
import numpy as np

from streampose.frame import COCO_SKELETON, UNTRACKED, Event, Frame, Persons
from streampose.sinks.inset3d import draw_inset

# Joints less confident than this are not drawn, nor the bones that touch them.
MIN_KEYPOINT_CONFIDENCE = 0.3

# BGR; neighbours differ strongly because consecutive track ids usually share a scene.
PALETTE = (
    (75, 25, 230), (75, 180, 60), (25, 225, 255), (200, 130, 0), (48, 130, 245),
    (180, 30, 145), (240, 240, 70), (230, 50, 240), (60, 245, 210), (212, 190, 250),
    (128, 128, 0), (255, 190, 220), (40, 110, 170), (0, 0, 128), (195, 255, 170),
    (0, 128, 128), (180, 215, 255), (128, 0, 0),
)
UNTRACKED_COLOUR = (200, 200, 200)
EVENT_BACKGROUND = (0, 0, 200)
OVERLAY_BACKGROUND = (40, 40, 40)
FONT = cv2.FONT_HERSHEY_SIMPLEX

_BONES = np.array(COCO_SKELETON, np.intp)  # (B, 2) keypoint indices


def track_colour(track_id: int) -> tuple[int, int, int]:
    """The BGR colour of a track, the same in every frame and every run."""
    if track_id == UNTRACKED:
        return UNTRACKED_COLOUR
    return PALETTE[track_id % len(PALETTE)]


def draw_frame(frame: Frame, overlay: dict[str, object] | None = None,
               events: list[Event] | None = None) -> np.ndarray:
    """An annotated copy of `frame.image` ((H, W, 3) uint8 BGR); the frame is not changed.

    overlay: label -> value shown on one line at the bottom-left, e.g.
             {"fps": 9.9, "latency": "42 ms"}; floats are shown with one decimal.
    events:  the event banners to show (default: this frame's events); a recorder
             passes recent ones too so a banner stays up long enough to be read.
    """
    image = frame.image.copy()
    style = _Style.for_image(image)
    persons = frame.persons
    if persons.keypoints is not None:
        _draw_skeletons(image, persons, style)
    _draw_persons(image, persons, style)
    if persons.kpts3d is not None and len(persons):
        draw_inset(image, persons.kpts3d, [track_colour(int(t)) for t in persons.track_ids])
    _draw_events(image, frame.events if events is None else events, style)
    if overlay:
        _draw_overlay(image, overlay, style)
    return image


class _Style:
    """Line widths and font sizes for one image size."""

    def __init__(self, scale: float):
        self.line = max(1, round(2 * scale))
        self.joint = 2 * self.line + 1
        self.font_scale = max(0.35, 0.5 * scale)
        self.font_thickness = max(1, round(scale))
        self.pad = max(2, round(3 * scale))

    @classmethod
    def for_image(cls, image: np.ndarray) -> _Style:
        return cls(max(image.shape[:2]) / 640)


def _draw_skeletons(image: np.ndarray, persons: Persons, style: _Style) -> None:
    keypoints = persons.keypoints                                   # (N, K, 3)
    visible = keypoints[..., 2] >= MIN_KEYPOINT_CONFIDENCE          # (N, K)
    bone_visible = visible[:, _BONES].all(axis=2)                   # (N, B)
    points = np.round(keypoints[..., :2]).astype(np.int32)          # (N, K, 2)
    bones = points[:, _BONES]                                       # (N, B, 2, 2)
    for i, track_id in enumerate(persons.track_ids):
        colour = track_colour(int(track_id))
        cv2.polylines(image, list(bones[i, bone_visible[i]]), False, colour, style.line, cv2.LINE_AA)
        # A zero-length thick line is a filled dot: all joints in one call.
        joints = points[i, visible[i]][:, None, :].repeat(2, axis=1)
        cv2.polylines(image, list(joints), False, colour, style.joint, cv2.LINE_AA)


def _draw_persons(image: np.ndarray, persons: Persons, style: _Style) -> None:
    boxes = np.round(persons.boxes).astype(np.int32)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        track_id = int(persons.track_ids[i])
        colour = track_colour(track_id)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, style.line)
        label = f"id {track_id}" if track_id != UNTRACKED else f"{persons.scores[i]:.2f}"
        _label(image, label, (x1, y1), colour, style, above=True)
        notes = _format_annotations(persons.annotations[i]) if i < len(persons.annotations) else ""
        if notes:  # inside the box's top: below it may be off the frame or under the overlay
            _label(image, notes, (x1, y1), colour, style, above=False)


def _format_annotations(annotations: dict) -> str:
    shown = [(k, v) for k, v in annotations.items() if isinstance(v, (int, float, str))]
    return "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown)


def _draw_events(image: np.ndarray, events: list[Event], style: _Style) -> None:
    y = 0
    for event in events:
        text = event.kind.replace("_", " ").upper()
        if "count" in event.data:
            text += f" {event.data['count']}"
        if event.track_id != UNTRACKED:
            text += f"  id {event.track_id}"
        y += _label(image, text, (0, y), EVENT_BACKGROUND, style, above=False)


def _draw_overlay(image: np.ndarray, overlay: dict[str, object], style: _Style) -> None:
    text = "  ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in overlay.items())
    _label(image, text, (0, image.shape[0]), OVERLAY_BACKGROUND, style, above=True)


def _label(image: np.ndarray, text: str, corner: tuple[int, int], background: tuple[int, int, int],
           style: _Style, above: bool) -> int:
    """Text on a filled box whose left edge is at corner[0] and whose bottom (above=True)
    or top edge is at corner[1], kept inside the image; returns the box height."""
    (width, height), baseline = cv2.getTextSize(text, FONT, style.font_scale, style.font_thickness)
    box_height = height + baseline + 2 * style.pad
    x = min(max(corner[0], 0), max(image.shape[1] - width - 2 * style.pad, 0))
    top = corner[1] - box_height if above else corner[1]
    top = min(max(top, 0), max(image.shape[0] - box_height, 0))
    cv2.rectangle(image, (x, top), (x + width + 2 * style.pad, top + box_height), background, cv2.FILLED)
    cv2.putText(image, text, (x + style.pad, top + style.pad + height), FONT, style.font_scale,
                _text_colour(background), style.font_thickness, cv2.LINE_AA)
    return box_height


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (BT.601 luma)."""
    blue, green, red = background
    return (0, 0, 0) if 0.114 * blue + 0.587 * green + 0.299 * red > 150 else (255, 255, 255)
