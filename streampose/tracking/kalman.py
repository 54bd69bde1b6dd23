"""A constant-velocity Kalman filter on a person's box, stepped by media time.

State (8,): centre x, its velocity, centre y, its velocity, width, its velocity, height,
its velocity; pixels and pixels per second. Measurement (4,): centre x, centre y, width,
height in pixels. The filter is filterpy's; this module chooses the model: the transition
for a step of `dt` seconds and the noises, which scale with the box's height so that a
near person and a far one are followed alike.

The noise levels were calibrated on the shared videos (PicoDet boxes of people walking,
entering and hugging, at 30 fps): the Mahalanobis gate (`GATE_CHI2_95`) rejects about 3%
of the boxes that truly continue a track, close to the 5% it stands for. The innovations
are heavy-tailed (median normalised innovation squared 0.4, mean 3): small jitter most of
the time, large jumps when a person enters or is occluded.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from filterpy.common import Q_continuous_white_noise
from filterpy.kalman import KalmanFilter

# Spectral density of the white-noise acceleration of centre x, centre y, width and height,
# in box heights squared per second cubed (velocity variance grows by this per second).
ACCELERATION_DENSITY = np.array([1.0, 1.0, 1.0, 0.25])
# Measurement noise: standard deviation of a detected box's centre x, centre y, width and
# height, as a fraction of its height. Widths swing with arms and legs.
MEASUREMENT_STD = np.array([0.02, 0.02, 0.05, 0.02])
# A new track's velocity is unknown: this standard deviation, in heights per second.
INITIAL_VELOCITY_STD = 2.0
# 95% quantile of chi-square with 4 degrees of freedom: a detection whose Mahalanobis
# distance squared to the predicted box exceeds it is implausible for that track.
GATE_CHI2_95 = 9.4877
MIN_SIDE = 1.0  # pixels; predictions never shrink a box below this

_POSITIONS = np.array([0, 2, 4, 6])
_VELOCITIES = _POSITIONS + 1
_MEASURE = np.zeros((4, 8))
_MEASURE[np.arange(4), _POSITIONS] = 1.0


@lru_cache(maxsize=64)
def _step(dt: float) -> tuple[np.ndarray, np.ndarray]:
    """The transition (8, 8) over `dt` seconds and its process noise for a box one pixel
    high. Cached: a stream's frame interval takes few distinct values."""
    transition = np.eye(8)
    transition[_POSITIONS, _VELOCITIES] = dt
    noise = np.kron(np.diag(ACCELERATION_DENSITY), Q_continuous_white_noise(2, dt))
    return transition, noise


def boxes_to_measurements(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 -> (N, 4) centre x, centre y, width, height."""
    boxes = np.asarray(boxes, np.float64)
    size = boxes[:, 2:] - boxes[:, :2]
    return np.concatenate([boxes[:, :2] + size / 2, size], axis=1)


def measurements_to_boxes(z: np.ndarray) -> np.ndarray:
    """(N, 4) centre x, centre y, width, height -> (N, 4) x1, y1, x2, y2."""
    half = np.maximum(z[:, 2:], MIN_SIDE) / 2
    return np.concatenate([z[:, :2] - half, z[:, :2] + half], axis=1)


class BoxKalman:
    """One person's box filter. `time` is the media time its state refers to, seconds."""

    def __init__(self, box: np.ndarray, time: float):
        z = boxes_to_measurements(box[None])[0]
        height = max(z[3], MIN_SIDE)
        self.filter = KalmanFilter(dim_x=8, dim_z=4)
        self.filter.H = _MEASURE
        self.filter.x[_POSITIONS, 0] = z
        self.filter.P = np.diag(np.repeat(np.square(MEASUREMENT_STD * height), 2))
        self.filter.P[_VELOCITIES, _VELOCITIES] = (INITIAL_VELOCITY_STD * height) ** 2
        self.time = time

    @property
    def height(self) -> float:
        return max(float(self.filter.x[6, 0]), MIN_SIDE)

    @property
    def box(self) -> np.ndarray:
        """(4,) x1, y1, x2, y2 of the current state."""
        return measurements_to_boxes(self.filter.x[_POSITIONS, 0][None])[0]

    @property
    def centre_velocity(self) -> np.ndarray:
        """(2,) velocity of the box centre, pixels per second."""
        return self.filter.x[[1, 3], 0]

    def predict(self, time: float) -> None:
        """Advance the state to `time` (seconds; earlier times leave it where it is)."""
        dt = time - self.time
        if dt <= 0:
            return
        transition, noise = _step(dt)
        self.filter.predict(F=transition, Q=noise * self.height ** 2)
        self.time = time

    def update(self, box: np.ndarray) -> None:
        """Correct the state with a detected box (4,) x1, y1, x2, y2 at the current time."""
        z = boxes_to_measurements(box[None])[0]
        self.filter.update(z, R=self._measurement_noise(z[3]))

    def mahalanobis_sq(self, boxes: np.ndarray) -> np.ndarray:
        """(N,) squared Mahalanobis distance of boxes (N, 4) x1, y1, x2, y2 from the
        predicted measurement, under its covariance plus the boxes' measurement noise."""
        if not len(boxes):
            return np.zeros(0)
        innovation = boxes_to_measurements(boxes) - self.filter.x[_POSITIONS, 0]
        covariance = self.filter.P[np.ix_(_POSITIONS, _POSITIONS)] + self._measurement_noise(self.height)
        solved = np.linalg.solve(covariance, innovation.T)
        return np.einsum("ij,ji->i", innovation, solved)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, float]:
        """The state, its covariance and time, for `restore`."""
        return self.filter.x.copy(), self.filter.P.copy(), self.time

    def restore(self, saved: tuple[np.ndarray, np.ndarray, float]) -> None:
        x, covariance, time = saved
        self.filter.x, self.filter.P, self.time = x.copy(), covariance.copy(), time

    @staticmethod
    def _measurement_noise(height: float) -> np.ndarray:
        return np.diag(np.square(MEASUREMENT_STD * max(height, MIN_SIDE)))
