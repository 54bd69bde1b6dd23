"""Annotation of a frame for people watching: boxes, labels, skeletons, events, overlay.

What a viewer sees, and why:
- Skeletons are coloured by body side, the person's own left in LEFT_COLOUR, right in
  RIGHT_COLOUR, the midline in CENTRE_COLOUR, so a turned or crossed body still reads. Every
  stroke has a dark halo, so it shows on white and on dark clothes alike.
- Joints under MIN_KEYPOINT_CONFIDENCE are not drawn (nor their bones); joints under
  CERTAIN_KEYPOINT_CONFIDENCE are hollow and their bones thin. A person is drawn more
  transparent the lower its detection score, so a 0.3 detection does not look like a 0.97 one.
- Box and label share a colour per track id (`track_colour`), the same in every frame; people
  without a track are white. Red is kept for alarms (`ALARM_COLOUR`): no track is red.
- Zones (`streampose.geometry.zones`) lie under everything: a thin fill and an outline in their
  kind's colour (`ZONE_COLOURS`), their name and kind at their top corner, so a viewer sees
  where lying is normal (rest), who is not watched (ignore) and where lying never is (floor).
- Labels are words (`describe`, one mapping from plugin annotations to text) on a filled
  background, kept inside the frame and off each other, the banners, the fps line and the 3D
  inset by a greedy placement (`place_labels`).

Sizes: strokes follow the person's size (a far person gets thin lines), within bounds set by
the image size; text follows the image size only, so labels read the same at 320x240 and 1080p.
Layout: event banners stack at the top-left, the fps/latency overlay sits at the bottom-left,
the 3D skeleton inset at the bottom-right.
"""

from __future__ import annotations

import colorsys
import threading
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from streampose.frame import COCO_KEYPOINTS, COCO_SKELETON, UNTRACKED, Event, Frame, Persons
from streampose.sinks.inset3d import draw_inset

# Joints less confident than this are not drawn, nor the bones that touch them.
MIN_KEYPOINT_CONFIDENCE = 0.3
# Joints less confident than this (but drawn) are hollow, and bones touching them thin.
CERTAIN_KEYPOINT_CONFIDENCE = 0.5
# Detection score -> opacity: FAINT_SCORE and below are drawn at MIN_OPACITY, SOLID_SCORE and
# above opaque, linear between.
FAINT_SCORE, SOLID_SCORE, MIN_OPACITY = 0.3, 0.7, 0.4

# BGR. Orange and azure are told apart by colour-blind viewers too; green marks the midline.
LEFT_COLOUR = (0, 150, 255)
RIGHT_COLOUR = (255, 170, 30)
CENTRE_COLOUR = (90, 220, 90)
HALO_COLOUR = (20, 20, 20)
UNTRACKED_COLOUR = (255, 255, 255)
ALARM_COLOUR = (0, 0, 220)        # fallen, and the fall_confirmed banner
WARNING_COLOUR = (0, 140, 255)    # falling: maybe a fall, not confirmed yet
EVENT_BACKGROUND = (70, 50, 30)
# Zones by kind: green where lying is normal, grey where nobody is watched, blue for the floor;
# never red or orange, which mean alarms. Their fill is ZONE_FILL opaque, so people stay clear.
ZONE_COLOURS = {"rest": (90, 190, 60), "ignore": (150, 150, 150), "floor": (200, 120, 40)}
ZONE_FILL = 0.18
OVERLAY_BACKGROUND = (40, 40, 40)
# Track hues step by the golden ratio round the wheel, so consecutive ids (usually in one scene
# together) get far-apart hues; the red band is left out for alarms.
TRACK_HUE_FROM, TRACK_HUE_SPAN = 25 / 360, 300 / 360
FONT = cv2.FONT_HERSHEY_SIMPLEX
# Labels look for a free spot up to this many label heights above and below their place, and
# as many half label widths left and right.
LABEL_SEARCH_STEPS = 8

_LEFT, _RIGHT, _CENTRE = 0, 1, 2
_SIDE_COLOURS = (LEFT_COLOUR, RIGHT_COLOUR, CENTRE_COLOUR)
_JOINT_SIDE = np.array([_LEFT if n.startswith("left") else _RIGHT if n.startswith("right") else _CENTRE
                        for n in COCO_KEYPOINTS])                                   # (K,)
_BONES = np.array(COCO_SKELETON, np.intp)                                           # (B, 2) keypoint indices
# A bone is on a side when neither end is on the other one (nose-left eye is left; eye-eye is centre).
_BONE_SIDE = np.array([a if a == b or b == _CENTRE else b if a == _CENTRE else _CENTRE
                       for a, b in _JOINT_SIDE[_BONES]])                            # (B,)


@lru_cache(maxsize=1024)
def track_colour(track_id: int) -> tuple[int, int, int]:
    """The BGR colour of a track, the same in every frame and every run; white when untracked."""
    if track_id == UNTRACKED:
        return UNTRACKED_COLOUR
    hue = TRACK_HUE_FROM + TRACK_HUE_SPAN * ((track_id * 0.618033988749895) % 1.0)
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.8, 0.95)
    return round(255 * blue), round(255 * green), round(255 * red)


def draw_frame(frame: Frame, overlay: dict[str, object] | None = None,
               events: list[Event] | None = None) -> np.ndarray:
    """An annotated copy of `frame.image` ((H, W, 3) uint8 BGR); the frame is not changed.

    overlay: label -> value shown on one line at the bottom-left, e.g.
             {"fps": 9.9, "latency": "42 ms"}; floats are shown with one decimal.
    events:  the event banners to show (default: this frame's events); a recorder
             passes recent ones too so a banner stays up long enough to be read.

    Zones, people and the 3D inset are the same for every sink: they are drawn once per frame
    (`drawn_layer`) and each call adds its banners, overlay and the person labels (placed off
    the banners and overlay, so they are the caller's) on a copy. Code that changes a frame
    outside the runtime after drawing it calls `frame.changed()`, as the runtime does.
    """
    layer, kept_clear = drawn_layer(frame)
    image = layer.copy()
    style = TextStyle.for_image(image)
    taken = list(kept_clear)  # (x1, y1, x2, y2) of what labels must not cover
    taken += _draw_events(image, frame.events if events is None else events, style)
    if overlay:
        text = "  ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in overlay.items())
        taken.append(_draw_label(image, Label(text, OVERLAY_BACKGROUND), (0, image.shape[0] - 1), style,
                                 above=True))
    persons = frame.persons
    labels = person_labels(persons)
    for label, rect in zip(labels, place_labels(persons.boxes, labels, image.shape, style, taken)):
        _fill_label(image, label, rect, style)
    return image


# Frames are drawn by several sink threads at once (recorder, clips, live view): the first to
# come draws the shared layer while the others of the same frame wait for it. Locks are striped
# by frame so that different frames are still drawn in parallel.
_LAYER_LOCKS = [threading.Lock() for _ in range(64)]


def drawn_layer(frame: Frame) -> tuple[np.ndarray, tuple[tuple[int, int, int, int], ...]]:
    """`frame.image` with its zones, people and 3D inset drawn, and the rectangles labels must
    not cover; drawn on the first call and kept in `frame.drawn` (which the runtime clears when a
    stage changes the frame). Read-only: callers draw on a copy."""
    with _LAYER_LOCKS[id(frame) % len(_LAYER_LOCKS)]:
        if frame.drawn is None:
            image = frame.image.copy()
            style = TextStyle.for_image(image)
            persons = frame.persons
            taken = _draw_zones(image, frame.zones, style)
            _draw_people(image, persons, style)
            if persons.kpts3d is not None and len(persons):
                inset = draw_inset(image, persons.kpts3d, [track_colour(int(t)) for t in persons.track_ids])
                if inset is not None:
                    taken.append(inset)
            image.flags.writeable = False
            frame.drawn = image, tuple(taken)
        return frame.drawn


# ---------------------------------------------------------------------------------- words

@dataclass(frozen=True)
class Label:
    """A line of text and the colour of its background."""

    text: str
    background: tuple[int, int, int]


@dataclass(frozen=True)
class Phrase:
    """Words about a person; `colour` overrides the track colour of its label (alarms)."""

    text: str
    colour: tuple[int, int, int] | None = None


def describe(annotations: dict) -> list[Phrase]:
    """What a viewer reads about a person, from its plugin annotations: the one mapping from
    plugin outputs to words. Normal states (upright, hand down) say nothing. Unknown keys are
    shown as `key value` (numbers with two decimals, true as the key alone, false not at all)."""
    phrases = []
    rest = dict(annotations)
    fall_state, fall_score = rest.pop("fall_state", None), rest.pop("fall_score", None)
    if fall_state in ("falling", "fallen"):
        score = f" {fall_score:.2f}" if isinstance(fall_score, (int, float)) else ""
        colour = ALARM_COLOUR if fall_state == "fallen" else WARNING_COLOUR
        phrases.append(Phrase(f"{fall_state.upper()}{score}", colour))
    elif fall_state in ("down", "recovered"):
        phrases.append(Phrase(fall_state))
    exercise, reps = rest.pop("exercise", None), rest.pop("reps", None)
    if exercise is not None and reps is not None:
        phrases.append(Phrase(f"{_exercise_plural(exercise)} {reps}"))
    elif reps is not None:
        phrases.append(Phrase(f"reps {reps}"))
    for key, value in rest.items():
        words = key.replace("_", " ")
        if value is True:
            phrases.append(Phrase(words))
        elif isinstance(value, float):
            phrases.append(Phrase(f"{words} {value:.2f}"))
        elif isinstance(value, (int, str)) and not isinstance(value, bool):
            phrases.append(Phrase(f"{words} {value}"))
    return phrases


def _exercise_plural(exercise: str) -> str:
    """squat -> squats, push_up -> push-ups, jumping_jack -> jumping jacks."""
    return exercise.replace("push_up", "push-up").replace("_", " ") + "s"


def person_labels(persons: Persons) -> list[Label]:
    """Each person's label: `#id` (or the detection score when untracked) and its phrases, on
    the track's colour, or on the alarm colour of a phrase that has one."""
    labels = []
    for i, track_id in enumerate(persons.track_ids.tolist()):
        phrases = describe(persons.annotations[i]) if i < len(persons.annotations) else []
        name = f"#{track_id}" if track_id != UNTRACKED else f"{persons.scores[i]:.2f}"
        alarms = [p.colour for p in phrases if p.colour is not None]
        labels.append(Label(" ".join([name] + [p.text for p in phrases]),
                            alarms[0] if alarms else track_colour(track_id)))
    return labels


_EVENT_WORDS = {
    "fall_started": ("falling", WARNING_COLOUR),
    "fall_confirmed": ("FALL", ALARM_COLOUR),
    "fall_recovered": ("recovered from a fall", EVENT_BACKGROUND),
    "hand_raised": ("raised a hand", EVENT_BACKGROUND),
}


def event_label(event: Event) -> Label:
    """A banner's words: `#3 FALL`, `#2 squats 3`, `#5 raised a hand`; other kinds by name."""
    if event.kind == "rep" and "count" in event.data:
        words, colour = f"{_exercise_plural(event.data.get('exercise', 'rep'))} {event.data['count']}", \
            EVENT_BACKGROUND
    else:
        words, colour = _EVENT_WORDS.get(event.kind, (event.kind.replace("_", " "), EVENT_BACKGROUND))
    who = f"#{event.track_id} " if event.track_id != UNTRACKED else ""
    return Label(who + words, colour)


# ---------------------------------------------------------------------------------- zones

def _draw_zones(image: np.ndarray, zones, style: TextStyle) -> list[tuple[int, int, int, int]]:
    """Each zone's polygon (normalised corners scaled to the image), filled thinly and outlined in
    its kind's colour, with a `name (kind)` label at its top corner; the labels' rectangles. The
    fill is blended over the zones' bounding rectangle only, not the whole frame."""
    if not zones:
        return []
    height, width = image.shape[:2]
    polygons = [np.round(z.polygon * [width - 1, height - 1]).astype(np.int32) for z in zones]
    corners = np.vstack(polygons)
    x1, y1 = np.clip(corners.min(0), 0, [width - 1, height - 1])
    x2, y2 = np.clip(corners.max(0) + 1, 1, [width, height])
    region = image[y1:y2, x1:x2]
    layer = region.copy()
    for zone, polygon in zip(zones, polygons):
        cv2.fillPoly(layer, [polygon - [x1, y1]], ZONE_COLOURS[zone.kind], cv2.LINE_AA)
    region[:] = cv2.addWeighted(layer, ZONE_FILL, region, 1 - ZONE_FILL, 0)
    line = max(1, round(1.5 * style.image_scale))
    rects = []
    for zone, polygon in zip(zones, polygons):
        cv2.polylines(image, [polygon], True, ZONE_COLOURS[zone.kind], line, cv2.LINE_AA)
        top = polygon[np.lexsort((polygon[:, 0], polygon[:, 1]))[0]]
        rects.append(_draw_label(image, Label(f"{zone.name} ({zone.kind})", ZONE_COLOURS[zone.kind]),
                                 (int(top[0]), int(top[1])), style, above=False))
    return rects


# ---------------------------------------------------------------------------------- skeletons

def _draw_people(image: np.ndarray, persons: Persons, style: TextStyle) -> None:
    """Boxes and skeletons. Opaque people are drawn together, a few calls per stroke width; each
    faint one is drawn on a copy of the region it covers, then blended in, so that fading costs
    the person's size, not the frame's. Faint people go first, the least certain at the bottom."""
    if not len(persons):
        return
    boxes = persons.boxes
    sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    # Bones about 1% of the person's size, at least a hair and at most a few pixels per 640 of image.
    widths = np.clip(np.round(sizes / 100), max(1, round(0.7 * style.image_scale)),
                     max(2, round(3 * style.image_scale))).astype(int)                  # (N,)
    opacity = MIN_OPACITY + (1 - MIN_OPACITY) * np.clip((persons.scores - FAINT_SCORE)
                                                        / (SOLID_SCORE - FAINT_SCORE), 0, 1)  # (N,)
    colours = [track_colour(t) for t in persons.track_ids.tolist()]
    keypoints = persons.keypoints                                                        # (N, K, 3) or None
    height, width = image.shape[:2]
    faint = np.flatnonzero(opacity < 1)
    for i in faint[np.argsort(persons.scores[faint], kind="stable")].tolist():
        corners = boxes[i].reshape(2, 2)
        if keypoints is not None:
            corners = np.vstack([corners, keypoints[i, keypoints[i, :, 2] >= MIN_KEYPOINT_CONFIDENCE, :2]])
        margin = 2 * widths[i] + 2  # the joint radius and its halo
        x1, y1 = np.clip(np.floor(corners.min(0)) - margin, 0, [width, height]).astype(int)
        x2, y2 = np.clip(np.ceil(corners.max(0)) + margin + 1, 0, [width, height]).astype(int)
        if x2 <= x1 or y2 <= y1:
            continue
        region = image[y1:y2, x1:x2]
        layer = region.copy()
        _draw_group(layer, boxes[i:i + 1], None if keypoints is None else keypoints[i:i + 1], widths[i:i + 1],
                    [colours[i]], origin=np.array([x1, y1], np.float32))
        region[:] = cv2.addWeighted(layer, float(opacity[i]), region, 1 - float(opacity[i]), 0)
    solid = np.flatnonzero(opacity >= 1)
    _draw_group(image, boxes[solid], None if keypoints is None else keypoints[solid], widths[solid],
                [colours[i] for i in solid.tolist()], origin=np.zeros(2, np.float32))


def _draw_group(canvas: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray | None, widths: np.ndarray,
                colours: list[tuple[int, int, int]], origin: np.ndarray) -> None:
    """Boxes ((M, 4)) in their colours and skeletons ((M, K, 3) x, y, confidence) in side colours,
    with bone widths (M,), on `canvas`, whose pixel (0, 0) is image pixel `origin` (x, y).
    Halos go first, so that no halo covers a coloured stroke; a zero-length thick line is a dot."""
    for bone in np.unique(widths).tolist():
        members = widths == bone
        halo, radius, thin = max(1, round(bone / 3)), bone + 1, max(1, bone // 2)
        line = max(1, round(0.6 * bone))
        rects = np.round(boxes[members][:, [0, 1, 2, 1, 2, 3, 0, 3]] - np.tile(origin, 4)).astype(np.int32)
        rects = list(rects.reshape(-1, 4, 2))
        cv2.polylines(canvas, rects, True, HALO_COLOUR, line + 2 * halo)
        for rect, colour in zip(rects, (c for c, m in zip(colours, members) if m)):
            cv2.polylines(canvas, [rect], True, colour, line)
        if keypoints is None:
            continue
        confidence = keypoints[members][..., 2]                                         # (m, K)
        shown = confidence >= MIN_KEYPOINT_CONFIDENCE
        certain = confidence >= CERTAIN_KEYPOINT_CONFIDENCE
        points = np.round(keypoints[members][..., :2] - origin).astype(np.int32)        # (m, K, 2)
        dots = points[:, :, None, :].repeat(2, axis=2)                                  # (m, K, 2, 2)
        segments = points[:, _BONES]                                                    # (m, B, 2, 2)
        bone_shown = shown[:, _BONES].all(axis=2)                                       # (m, B)
        bone_certain = certain[:, _BONES].all(axis=2)
        strokes = ((bone_shown & bone_certain, bone), (bone_shown & ~bone_certain, thin))
        for kept, stroke in strokes:
            _lines(canvas, segments[kept], HALO_COLOUR, stroke + 2 * halo)
        _lines(canvas, dots[shown], HALO_COLOUR, 2 * (radius + halo) + 1)
        for side, side_colour in enumerate(_SIDE_COLOURS):
            for kept, stroke in strokes:
                _lines(canvas, segments[kept & (_BONE_SIDE == side)], side_colour, stroke)
            _lines(canvas, dots[shown & (_JOINT_SIDE == side)], side_colour, 2 * radius + 1)
        # Uncertain joints are hollow: a dark centre in the dot.
        _lines(canvas, dots[shown & ~certain], HALO_COLOUR, 2 * (radius // 2) + 1)


def _lines(canvas: np.ndarray, segments: np.ndarray, colour: tuple[int, int, int], width: int) -> None:
    """Segments ((S, 2, 2) int32 x, y) in one call. Halos are not anti-aliased: that costs 3-5
    times as much for thick lines, and the coloured stroke on top smooths the look."""
    if len(segments):
        cv2.polylines(canvas, list(segments), False, colour, width,
                      cv2.LINE_8 if colour == HALO_COLOUR else cv2.LINE_AA)


# ---------------------------------------------------------------------------------- labels

class TextStyle:
    """Font and padding for one image size, and the image's size relative to 640 pixels."""

    def __init__(self, image_scale: float):
        self.image_scale = image_scale
        self.font_scale = max(0.4, 0.45 * image_scale)
        self.font_thickness = max(1, round(1.4 * self.font_scale))
        self.pad = max(2, round(3 * image_scale))

    @classmethod
    def for_image(cls, image: np.ndarray) -> TextStyle:
        return cls(max(image.shape[:2]) / 640)

    def size(self, text: str) -> tuple[int, int]:
        """(width, height) of a label box holding `text`, pixels."""
        (width, height), baseline = cv2.getTextSize(text, FONT, self.font_scale, self.font_thickness)
        return width + 2 * self.pad, height + baseline + 2 * self.pad


def place_labels(boxes: np.ndarray, labels: list[Label], image_shape: tuple[int, ...], style: TextStyle,
                 taken: list[tuple[int, int, int, int]] = ()) -> list[tuple[int, int, int, int]]:
    """A rectangle (x1, y1, x2, y2; x2, y2 exclusive) for each label of `boxes` ((N, 4) x1, y1,
    x2, y2), inside the image and off the `taken` rectangles and each other where there is room.

    Greedy: labels of bigger boxes (nearer people) choose first; each takes the free spot nearest
    to its place above the box's top-left corner, on a grid of steps of half a label's width and
    a label's height round it; when none is free, the spot that overlaps least."""
    height, width = image_shape[:2]
    placed = np.array(taken, np.int64).reshape(-1, 4)
    rects: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)] * len(labels)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    steps = np.arange(-LABEL_SEARCH_STEPS, LABEL_SEARCH_STEPS + 1)
    for i in np.argsort(-areas, kind="stable").tolist():
        label_width, label_height = style.size(labels[i].text)
        x1, y1 = np.round(boxes[i, :2]).astype(np.int64)
        xs, ys = np.meshgrid(x1 + steps * label_width // 2, y1 - label_height + steps * label_height)
        xs = np.clip(xs.ravel(), 0, max(width - label_width, 0))
        ys = np.clip(ys.ravel(), 0, max(height - label_height, 0))
        candidates = np.stack([xs, ys, xs + label_width, ys + label_height], axis=1)   # (C, 4)
        overlap = _overlap_areas(candidates, placed).sum(axis=1)                        # (C,)
        distance = np.hypot(xs - x1, ys - (y1 - label_height))
        best = candidates[np.lexsort((distance, overlap))[0]]
        rects[i] = tuple(int(v) for v in best)
        placed = np.vstack([placed, best])
    return rects


def _overlap_areas(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection areas of rectangles x1, y1, x2, y2 (x2, y2 exclusive)."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.maximum(w, 0) * np.maximum(h, 0)


def _fill_label(image: np.ndarray, label: Label, rect: tuple[int, int, int, int], style: TextStyle) -> None:
    x1, y1, x2, y2 = rect
    cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), label.background, cv2.FILLED)
    (_, text_height), _ = cv2.getTextSize(label.text, FONT, style.font_scale, style.font_thickness)
    cv2.putText(image, label.text, (x1 + style.pad, y1 + style.pad + text_height), FONT, style.font_scale,
                _text_colour(label.background), style.font_thickness, cv2.LINE_AA)


def _draw_label(image: np.ndarray, label: Label, corner: tuple[int, int], style: TextStyle,
                above: bool) -> tuple[int, int, int, int]:
    """`label` with its left edge at corner[0] and its bottom (above=True) or top edge at
    corner[1], kept inside the image; returns its rectangle (x2, y2 exclusive)."""
    label_width, label_height = style.size(label.text)
    height, width = image.shape[:2]
    x = min(max(corner[0], 0), max(width - label_width, 0))
    y = corner[1] + 1 - label_height if above else corner[1]
    y = min(max(y, 0), max(height - label_height, 0))
    rect = (x, y, x + label_width, y + label_height)
    _fill_label(image, label, rect, style)
    return rect


def _draw_events(image: np.ndarray, events: list[Event], style: TextStyle) -> list[tuple[int, int, int, int]]:
    """Banners stacked down from the top-left corner; their rectangles."""
    rects, y = [], 0
    for event in events:
        rects.append(_draw_label(image, event_label(event), (0, y), style, above=False))
        y = rects[-1][3]
    return rects


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (BT.601 luma)."""
    blue, green, red = background
    return (0, 0, 0) if 0.114 * blue + 0.587 * green + 0.299 * red > 150 else (255, 255, 255)
