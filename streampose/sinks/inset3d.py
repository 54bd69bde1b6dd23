"""A small 3D inset in the bottom-right corner: every lifted skeleton seen from the front (as the
camera sees it), from the side (depth left to right, near on the left) and from above (depth
bottom to top, the camera below).

All three views share one scale, fitted to the joints shown, so that lengths compare across
views and persons keep their relative places (who stands nearer, who is taller).
"""

from __future__ import annotations

import cv2
import numpy as np

from streampose.frame import COCO_SKELETON

_BONES = np.array(COCO_SKELETON, np.intp)
# Per view: the two camera-frame axes shown (horizontal, vertical) and their signs on screen.
VIEWS = (("front", (0, 1), (1, 1)), ("side", (2, 1), (1, 1)), ("top", (0, 2), (1, -1)))
BACKGROUND = (30, 30, 30)
BACKGROUND_ALPHA = 0.7
DEFAULT_COLOUR = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_inset(image: np.ndarray, kpts3d: np.ndarray, colours: list[tuple[int, int, int]] | None = None,
               min_confidence: float = 0.3, size_fraction: float = 0.2) -> tuple[int, int, int, int] | None:
    """Draw the views of `kpts3d` ((N, 17, 4): x, y, z metres in the camera frame, confidence)
    into the bottom-right corner of `image` ((H, W, 3) uint8 BGR), in place.

    colours:        a BGR colour per person (e.g. draw.track_colour of its id); default white.
    min_confidence: joints below it (and their bones) are left out; persons with none are not drawn.
    size_fraction:  side of each square view as a fraction of the image height.
    Returns the rectangle drawn over (x1, y1, x2, y2; x2, y2 exclusive), so that labels can keep
    off it, or None when no joint is confident enough and nothing is drawn.
    """
    visible = kpts3d[..., 3] >= min_confidence                               # (N, K)
    if not visible.any():
        return None
    height, width = image.shape[:2]
    side = max(40, round(size_fraction * height))
    margin = max(3, side // 12)
    panel_width = min(3 * side, width)
    top, left = height - min(side, height), width - panel_width
    region = image[top:, left:]
    region[:] = (region * (1 - BACKGROUND_ALPHA) + np.array(BACKGROUND) * BACKGROUND_ALPHA).astype(np.uint8)

    points = kpts3d[..., :3][visible]                                       # (M, 3)
    low, high = points.min(0), points.max(0)
    centre = (low + high) / 2
    extent = max(float((high - low).max()), 0.5)                             # metres; at least half a metre
    pixels_per_metre = (side - 2 * margin) / extent
    line = max(1, side // 70)
    font_scale = max(0.3, side / 300)
    bone_visible = visible[:, _BONES].all(axis=2)                             # (N, B)
    for view, (name, axes, signs) in enumerate(VIEWS):
        origin = np.array([left + view * side + side / 2, top + side / 2])
        screen = (kpts3d[..., axes] - centre[list(axes)]) * np.array(signs) * pixels_per_metre + origin
        screen = np.round(screen).astype(np.int32)                            # (N, K, 2)
        for person in range(len(kpts3d)):
            colour = colours[person] if colours is not None else DEFAULT_COLOUR
            bones = screen[person][_BONES[bone_visible[person]]]              # (b, 2, 2)
            cv2.polylines(image, list(bones), False, colour, line, cv2.LINE_AA)
            joints = screen[person, visible[person]][:, None, :].repeat(2, axis=1)
            cv2.polylines(image, list(joints), False, colour, 2 * line + 1, cv2.LINE_AA)
        cv2.putText(image, name, (left + view * side + margin, top + margin + round(10 * font_scale)), FONT,
                    font_scale, (200, 200, 200), 1, cv2.LINE_AA)
        if view:
            cv2.line(image, (left + view * side, top), (left + view * side, height - 1), (90, 90, 90), 1)
    return left, top, width, height
