"""Zones: named polygons of a stream's image where people are treated differently.

A zone is drawn once per camera (a bed, a sofa, an exercise mat, a television, a strip of floor)
and holds in normalised image coordinates: x from 0 at the left edge to 1 at the right edge, y
from 0 at the top to 1 at the bottom, so the same polygon fits the stream at any resolution.

Kinds (what the fall plugin does with a person whose body point is inside; docs/falls.md):

- `rest`: lying there is normal (a bed, a sofa, an exercise mat): no fall or long-lie alarm.
- `ignore`: nobody there is a person to watch (a television, a poster, a mirror, a corridor
  seen through a window): the person is dropped.
- `floor`: lying there is never normal; listed before a rest zone it carves a part out of it
  (the floor beside a bed drawn with a generous polygon).

A person is in the first zone of the list that contains their body point; later zones are
looked at only where the earlier ones do not reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ZoneKind = Literal["rest", "ignore", "floor"]
ZONE_KINDS: tuple[str, ...] = ("rest", "ignore", "floor")
# A polygon smaller than this share of the image is a slip of the pen (three points on a line).
MIN_AREA = 1e-4


@dataclass(frozen=True)
class Zone:
    """name: unique in the stream, reported in events; kind: one of ZONE_KINDS;
    polygon: (P, 2) float64 corners in order round the polygon, normalised x, y (0..1)."""

    name: str
    kind: ZoneKind
    polygon: np.ndarray

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool: which of (N, 2) normalised points lie inside (even-odd rule; a point on
        an edge may fall either way)."""
        return contains(self.polygon, points)


def contains(polygon: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N,) bool: points (N, 2) inside polygon (P, 2), by counting the edges a ray from each
    point towards +x crosses; vectorised over points and edges."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    a, b = polygon, np.roll(polygon, -1, axis=0)                        # (P, 2) edges a -> b
    x, y = points[:, :1], points[:, 1:]                                 # (N, 1)
    straddles = (a[:, 1] > y) != (b[:, 1] > y)                          # (N, P)
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing_x = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    return (straddles & (x < crossing_x)).sum(axis=1) % 2 == 1


def zone_at(zones: tuple[Zone, ...] | list[Zone], point: np.ndarray) -> Zone | None:
    """The first zone containing `point` ((2,) normalised x, y), or None (also for a NaN point)."""
    if not np.isfinite(point).all():
        return None
    for zone in zones:
        if zone.contains(point[None])[0]:
            return zone
    return None


def area(polygon: np.ndarray) -> float:
    """Area of a simple polygon (P, 2), shoelace formula, in the units of its coordinates squared."""
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def polygon_problem(polygon: np.ndarray) -> str | None:
    """Why (P, 2) corners make no usable zone, or None: two edges crossing (the corners are not
    in order round it) or almost no area (corners on a line or repeated)."""
    p = len(polygon)
    a, b = polygon, np.roll(polygon, -1, axis=0)
    for i in range(p):
        for j in range(i + 2, p):
            if i == 0 and j == p - 1:
                continue   # neighbours through the closing edge
            if _segments_cross(a[i], b[i], a[j], b[j]):
                return (f"edges {i + 1}-{(i + 1) % p + 1} and {j + 1}-{(j + 1) % p + 1} cross: list the corners in "
                        f"order round the polygon")
    if area(polygon) < MIN_AREA:
        return f"its area is {area(polygon):.2g} of the image (under {MIN_AREA:g}): corners on a line or repeated?"
    return None


def _segments_cross(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> bool:
    """Whether segments p1-p2 and q1-q2 properly cross (touching ends do not count)."""
    def side(a, b, c):
        return np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))
    return side(p1, p2, q1) * side(p1, p2, q2) < 0 and side(q1, q2, p1) * side(q1, q2, p2) < 0
