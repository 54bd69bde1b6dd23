"""Temporal smoothing of joints: OneEuro and EMA filters per track and joint, driven by
media timestamps.

A `TrackFilters` holds the filter state of up to `capacity` tracks of one stream for one
kind of coordinate (2D pixels or 3D metres) in arrays of shape (capacity, J, C): J joints,
C coordinates. `update` filters N persons at once, all joints and coordinates together.

Every joint keeps the media time of its last confident observation, so:
- the time step is the joint's own (dropped frames and variable frame rates just give a
  longer step);
- a joint not updated for more than `reset_gap_s` (a gap in the stream, or a long
  occlusion), or whose media time did not move forward (timestamps reset), starts afresh
  at its next observation instead of being pulled from a stale position;
- a joint below `min_confidence` (or with a non-finite coordinate) does not move the
  filter: its last filtered position is held, with a confidence that halves every
  `half_life_s`; once that falls below the joint's own confidence, or after `reset_gap_s`,
  the raw joint is the better guess and passes through unfiltered.

OneEuro (Casiez et al., CHI 2012) is a low-pass filter whose cutoff rises with speed:
cutoff = min_cutoff_hz + beta * speed. Speed is the length of the joint's filtered velocity
vector (x and y of a joint share one cutoff), divided by a per-person `scale`. For pixels
the scale is the person's size on screen: a person twice as near moves, and jitters, twice
as many pixels per second, so a beta in Hz per pixel/s would smooth near people too little
or far ones too much; in Hz per (person sizes per second) one setting fits both, and the
filter is exactly scale-invariant. For metres the scale is 1 (beta in Hz per m/s).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

# EMA's alpha is the weight of the newest sample when frames are this many per second apart;
# other intervals get the weight with the same time constant.
EMA_REFERENCE_FPS = 30.0


def _smoothing_factor(cutoff_hz: np.ndarray | float, dt: np.ndarray) -> np.ndarray:
    """Weight of the newest sample in a first-order low-pass with this cutoff over step dt:
    1 / (1 + tau / dt) with time constant tau = 1 / (2 pi cutoff)."""
    steps = (2.0 * np.pi) * cutoff_hz * dt
    return steps / (1.0 + steps)


@dataclass(frozen=True)
class OneEuro:
    """min_cutoff_hz: cutoff at rest, Hz. beta: cutoff added per unit of speed (speed in
    scale units per second), Hz. d_cutoff_hz: cutoff of the speed estimate, Hz."""

    min_cutoff_hz: float
    beta: float
    d_cutoff_hz: float

    def step(self, x_hat: np.ndarray, dx_hat: np.ndarray, x: np.ndarray, dt: np.ndarray,
             scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One filter step. x_hat, dx_hat, x: (N, J, C) previous output, previous filtered
        velocity (per second) and new sample; dt: (N, J) seconds > 0; scale: (N,).
        Returns the new output and filtered velocity."""
        dt = dt[..., None]
        dx_hat = dx_hat + _smoothing_factor(self.d_cutoff_hz, dt) * ((x - x_hat) / dt - dx_hat)
        speed = np.sqrt(np.einsum("njc,njc->nj", dx_hat, dx_hat)) / scale[:, None]
        cutoff = self.min_cutoff_hz + self.beta * speed[..., None]
        return x_hat + _smoothing_factor(cutoff, dt) * (x - x_hat), dx_hat


@dataclass(frozen=True)
class Ema:
    """alpha: weight of the newest sample for frames 1/EMA_REFERENCE_FPS s apart, 0 < alpha <= 1."""

    alpha: float

    def step(self, x_hat: np.ndarray, dx_hat: np.ndarray, x: np.ndarray, dt: np.ndarray,
             scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As OneEuro.step; the velocity is not used and comes back unchanged."""
        weight = 1.0 - (1.0 - self.alpha) ** (dt[..., None] * EMA_REFERENCE_FPS)
        return x_hat + weight * (x - x_hat), dx_hat


@dataclass(frozen=True)
class Hold:
    """How confidence and gaps are handled (see the module doc).

    min_confidence: joints below it do not update the filter, 0..1.
    half_life_s:    a held joint's confidence halves every this many seconds.
    reset_gap_s:    a joint not updated for longer starts afresh, seconds.
    """

    min_confidence: float
    half_life_s: float
    reset_gap_s: float


class TrackFilters:
    """Filter state of `capacity` tracks x `joints` joints x `coords` coordinates."""

    def __init__(self, capacity: int, joints: int, coords: int, kind: OneEuro | Ema, hold: Hold):
        self.joints, self.coords = joints, coords
        self.kind, self.hold = kind, hold
        self._x = np.zeros((capacity, joints, coords))           # filtered position
        self._dx = np.zeros((capacity, joints, coords))          # filtered velocity, per second
        self._time = np.full((capacity, joints), -np.inf)        # media time of the last update
        self._confidence = np.zeros((capacity, joints))          # confidence of the last update

    def clear(self, rows: np.ndarray) -> None:
        """Forget the tracks at `rows`: their next observation starts afresh."""
        self._time[rows] = -np.inf

    def update(self, rows: np.ndarray, values: np.ndarray, confidence: np.ndarray, time: float,
               scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Filter the observations of the tracks at `rows` ((N,) distinct ints).

        values: (N, J, C) coordinates; confidence: (N, J) 0..1; time: media time, seconds;
        scale: (N,) > 0, the size speed is measured in (see the module doc).
        Returns the smoothed values (N, J, C) and their confidence (N, J), float32.
        """
        x_hat, dx_hat = self._x[rows], self._dx[rows]
        last_time, last_confidence = self._time[rows], self._confidence[rows]
        dt = time - last_time                                    # inf for joints never seen
        confident = (confidence >= self.hold.min_confidence) & np.isfinite(values).all(axis=2)
        continuing = (dt > 0) & (dt <= self.hold.reset_gap_s)
        age = np.where(continuing, dt, np.inf)                   # a discontinuity ends holding
        stepped_x, stepped_dx = self.kind.step(x_hat, dx_hat, values, np.where(continuing, dt, 1.0), scale)
        updated = (confident & continuing)[..., None]
        started = (confident & ~continuing)[..., None]
        x_hat = np.where(updated, stepped_x, np.where(started, values, x_hat))
        dx_hat = np.where(updated, stepped_dx, np.where(started, 0.0, dx_hat))

        held_confidence = last_confidence * np.exp2(-age / self.hold.half_life_s)
        held = ~confident & (held_confidence > confidence)
        out_values = np.where((confident | held)[..., None], x_hat, values).astype(np.float32)
        out_confidence = np.where(held, held_confidence, confidence).astype(np.float32)

        self._x[rows], self._dx[rows] = x_hat, dx_hat
        self._time[rows] = np.where(confident, time, last_time)
        self._confidence[rows] = np.where(confident, confidence, last_confidence)
        return out_values, out_confidence


class TrackSlots:
    """Which row of a stream's TrackFilters each track id owns; when all `capacity` rows are
    taken, the least recently seen track loses its row."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._rows: OrderedDict[int, int] = OrderedDict()        # track id -> row, least recent first
        self._free = list(range(capacity - 1, -1, -1))
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._rows)

    def assign(self, track_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of `track_ids` (distinct, at most `capacity`), and which of them are new to
        their track (their filter state must be cleared)."""
        if len(track_ids) > self.capacity:
            raise ValueError(f"{len(track_ids)} tracks in one frame, more than the capacity {self.capacity}")
        for track_id in track_ids:
            if track_id in self._rows:
                self._rows.move_to_end(track_id)
        rows, new = np.empty(len(track_ids), np.intp), np.zeros(len(track_ids), bool)
        for i, track_id in enumerate(track_ids):
            row = self._rows.get(track_id)
            if row is None:
                if not self._free:
                    # The front was seen before every id of this frame, which were all moved
                    # behind it, so it is never one of them.
                    self._free.append(self._rows.popitem(last=False)[1])
                    self.evictions += 1
                row = self._rows[track_id] = self._free.pop()
                new[i] = True
            rows[i] = row
        return rows, new

    def release(self, track_ids: list[int]) -> None:
        """Free the rows of these track ids (ids without a row are ignored)."""
        for track_id in track_ids:
            row = self._rows.pop(track_id, None)
            if row is not None:
                self._free.append(row)
