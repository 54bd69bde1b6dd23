"""Temporal smoothing of joints: OneEuro and EMA filters per track and joint, driven by
media timestamps.

A `JointsState` is one track's filter state for one kind of coordinate (2D pixels or 3D
metres): arrays of J joints x C coordinates, kept in the smoother stage's state store
(runtime/state.py). `Filters.update` filters N tracks at once, all joints and coordinates
together, on their states stacked into (N, J, C) arrays.

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


@dataclass
class JointsState:
    """One track's filter state: J joints x C coordinates.

    x:          (J, C) filtered position.
    dx:         (J, C) filtered velocity, per second.
    time:       (J,) media time of each joint's last update, seconds; -inf before the first.
    confidence: (J,) confidence of that update, 0..1.
    """

    x: np.ndarray
    dx: np.ndarray
    time: np.ndarray
    confidence: np.ndarray

    @classmethod
    def fresh(cls, joints: int, coords: int) -> JointsState:
        return cls(np.zeros((joints, coords)), np.zeros((joints, coords)), np.full(joints, -np.inf),
                   np.zeros(joints))


class Filters:
    """A filter kind with its hold rules, applied to tracks' JointsStates."""

    def __init__(self, kind: OneEuro | Ema, hold: Hold):
        self.kind, self.hold = kind, hold

    def update(self, states: list[JointsState], values: np.ndarray, confidence: np.ndarray, time: float,
               scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Filter one observation of each of N tracks (their `states`, updated in place).

        values: (N, J, C) coordinates; confidence: (N, J) 0..1; time: media time, seconds;
        scale: (N,) > 0, the size speed is measured in (see the module doc).
        Returns the smoothed values (N, J, C) and their confidence (N, J), float32.
        """
        x_hat, dx_hat = np.stack([s.x for s in states]), np.stack([s.dx for s in states])
        last_time, last_confidence = np.stack([s.time for s in states]), np.stack([s.confidence for s in states])
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

        new_time = np.where(confident, time, last_time)
        new_confidence = np.where(confident, confidence, last_confidence)
        for n, state in enumerate(states):
            state.x, state.dx, state.time, state.confidence = x_hat[n], dx_hat[n], new_time[n], new_confidence[n]
        return out_values, out_confidence
