"""Training samples: mocap windows seen by random virtual cameras, with a detector's faults.

A sample is a window of T poses of one clip, spaced `dt` seconds apart (a camera's frame rate,
8-60 fps), filmed by a pinhole camera placed at random around the person (distance, height,
yaw, pitch, focal length, and where in the image the person is), projected, then spoiled the
way a top-down keypoint detector spoils poses: per-joint jitter in proportion to the person's
size, joints lost with a low confidence and a wild position (randomly, whole limbs at a time,
and wherever the joint leaves the image), and left/right swaps. All of it is vectorised over the
batch. The network sees `normalise_pose2d` of the spoiled window; the target is the true last
pose, root-relative, in the axes of the last pose's virtual camera (streampose.geometry.lifting),
in skeleton lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streampose.geometry.lifting import FLIP_PERMUTATION, STATURE_RATIO, normalise_pose2d, root_of
from trainers.lifter.mocap import Clip

LIMBS = (
    (13, 14, 15, 16),   # both legs below the hips (a desk, the image's lower edge)
    (7, 9), (8, 10),    # a forearm behind the body
    (15, 16),           # feet
)
SWAP_PAIRS = ((13, 14), (15, 16), (9, 10), (7, 8))


@dataclass(frozen=True)
class Cameras:
    """Ranges the virtual cameras are drawn from (uniform unless noted)."""

    fill: tuple[float, float] = (0.2, 0.9)             # image height a standing person spans (sets distance)
    height_m: tuple[float, float] = (0.3, 4.5)         # lens above the floor
    hfov_deg: tuple[float, float] = (40.0, 100.0)      # horizontal field of view, 16:9 image
    truncation: float = 0.15                            # probability that the person may reach out of the image
    roll_deg: float = 4.0                               # standard deviation
    stature_m: tuple[float, float] = (1.45, 1.95)      # standing height of the person
    fps: tuple[float, float] = (8.0, 60.0)             # frame rate of the window; log-uniform


@dataclass(frozen=True)
class Detector:
    """How badly the virtual keypoint detector does."""

    jitter: tuple[float, float] = (0.0, 0.08)          # per-joint noise, x the pose's RMS spread
    drop_rate: tuple[float, float] = (0.0, 0.12)       # per joint and frame
    limb_loss: float = 0.1                              # probability of losing one of LIMBS for the window
    swap: float = 0.02                                  # per frame: one left/right pair exchanged
    lost_noise: float = 0.5                             # lost joints' error, x the pose's spread
    lost_confidence: float = 0.3                        # lost joints' confidence is below this


CLEAN = Detector(jitter=(0.0, 0.0), drop_rate=(0.0, 0.0), limb_loss=0.0, swap=0.0)


@dataclass
class Batch:
    """inputs:  (B, T, 17, 3) float32, the network's input (normalise_pose2d of the spoiled window).
    targets:    (B, 17, 3) float32, true last pose, root-relative, skeleton lengths, virtual camera axes.
    rotation:   (B, 3, 3) float64, camera -> virtual camera of the last pose (from the spoiled rays).
    rays:       (B, T, 17, 2) float64, spoiled normalised image coordinates.
    confidence: (B, T, 17) float32.
    camera_points: (B, 17, 3) float64, true last pose in the camera frame, metres.
    stature:    (B,) float64, the person's standing height, metres.
    """

    inputs: np.ndarray
    targets: np.ndarray
    rotation: np.ndarray
    rays: np.ndarray
    confidence: np.ndarray
    camera_points: np.ndarray
    stature: np.ndarray


class Sampler:
    """Draws batches from clips; one random generator makes every draw reproducible."""

    def __init__(self, clips: list[Clip], window: int, cameras: Cameras = Cameras(),
                 detector: Detector = Detector(), seed: int = 0, mirror: bool = True):
        if not clips:
            raise ValueError("no clips to sample from")
        self.window = window
        self.cameras = cameras
        self.detector = detector
        self.mirror = mirror
        self.rng = np.random.default_rng(seed)
        self.joints = np.concatenate([c.joints for c in clips]).astype(np.float64)   # (sum F, 17, 3)
        self.starts = np.cumsum([0, *(len(c.joints) for c in clips)])[:-1]
        self.frames = np.array([len(c.joints) for c in clips])
        self.fps = np.array([c.fps for c in clips])
        durations = np.array([c.duration for c in clips])
        self.weights = durations / durations.sum()

    def batch(self, size: int) -> Batch:
        # Twice the windows asked for: those with a joint behind or too near a camera are dropped.
        world, stature = self._windows(2 * size)
        points, half_fov, seen = self._film(world, stature)
        keep = np.flatnonzero(seen)[:size]
        if len(keep) < size:
            raise RuntimeError("too few windows in front of their cameras; check the camera ranges")
        return self._spoil(points[keep], half_fov[keep], stature[keep])

    # ----------------------------------------------------------------- motion

    def _windows(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(count, T, 17, 3) world-frame windows in metres (Y up, floor at 0), and the persons'
        standing heights (count,) in metres."""
        rng, cams = self.rng, self.cameras
        clip = rng.choice(len(self.weights), count, p=self.weights)
        dt = 1.0 / np.exp(rng.uniform(*np.log(cams.fps), count))
        end = rng.uniform(0, (self.frames[clip] - 1) / self.fps[clip])
        # Half the windows run backwards in time: reversed motion is still human motion, and it
        # keeps the network from learning the few clips' dynamics by heart.
        direction = np.where(rng.random(count) < 0.5, 1.0, -1.0)
        times = end[:, None] - (direction * dt)[:, None] * np.arange(self.window - 1, -1, -1)
        # A track that began inside the window: its first poses repeat, as the stage pads them.
        began = rng.integers(0, self.window, count) * (rng.random(count) < 0.3)
        times[:, :-1] = np.where(np.arange(self.window - 1) < began[:, None], times[np.arange(count), began][:, None],
                                 times[:, :-1])
        position = np.clip(times, 0, ((self.frames[clip] - 1) / self.fps[clip])[:, None]) * self.fps[clip][:, None]
        low = np.minimum(np.floor(position).astype(int), self.frames[clip][:, None] - 1)
        high = np.minimum(low + 1, self.frames[clip][:, None] - 1)
        fraction = (position - low)[..., None, None]
        base = self.starts[clip][:, None]
        joints = self.joints[base + low] * (1 - fraction) + self.joints[base + high] * fraction
        if self.mirror:
            flip = rng.random(count) < 0.5
            joints[flip] = joints[flip][:, :, FLIP_PERMUTATION] * (-1, 1, 1)
        stature = rng.uniform(*cams.stature_m, count)
        return joints * (stature * STATURE_RATIO)[:, None, None, None], stature

    # ----------------------------------------------------------------- camera

    def _film(self, world: np.ndarray, stature: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each window filmed by a random camera: camera-frame points (N, T, 17, 3), the
        tangents of the half fields of view (N, 2) and whether all joints are in front (N,)."""
        rng, cams, count = self.rng, self.cameras, len(world)
        target = root_of(world[:, -1])                                        # (count, 3)
        half_h = np.radians(rng.uniform(*cams.hfov_deg, count)) / 2
        half_v = np.arctan(np.tan(half_h) * 9 / 16)
        distance = stature / (rng.uniform(*cams.fill, count) * 2 * np.tan(half_v))
        azimuth = rng.uniform(0, 2 * np.pi, count)
        centre = target + np.stack([distance * np.cos(azimuth), np.zeros(count), distance * np.sin(azimuth)], 1)
        centre[:, 1] = rng.uniform(*cams.height_m, count)
        rotation = _look_at(target - centre)                                  # (count, 3, 3) world -> camera
        # Turn the camera so that the person lands off-centre (yaw, then pitch, then roll), inside
        # the image unless it may be truncated.
        span = np.arctan(stature / 2 / distance)
        truncated = rng.random(count) < cams.truncation
        room_h = np.where(truncated, half_h, np.maximum(half_h - span / 2, 0))
        room_v = np.where(truncated, half_v, np.maximum(half_v - span, 0))
        yaw = rng.uniform(-1, 1, count) * room_h
        pitch = rng.uniform(-1, 1, count) * room_v
        roll = np.radians(rng.normal(0, cams.roll_deg, count))
        rotation = _axis_rotation(2, roll) @ _axis_rotation(0, pitch) @ _axis_rotation(1, yaw) @ rotation
        points = ((world - centre[:, None, None, :]).reshape(count, -1, 3) @ rotation.transpose(0, 2, 1)
                  ).reshape(world.shape)
        half_fov = np.stack([np.tan(half_h), np.tan(half_v)], 1)
        return points, half_fov, (points[..., 2] > 0.3).all(axis=(1, 2))

    # ----------------------------------------------------------------- detector

    def _spoil(self, points: np.ndarray, half_fov: np.ndarray, stature: np.ndarray) -> Batch:
        rng, det = self.rng, self.detector
        size, window = len(points), self.window
        half_fov = half_fov[:, None, None, :]
        true_rays = points[..., :2] / points[..., 2:3]                        # (B, T, 17, 2)
        relative = true_rays - root_of(true_rays)[..., None, :]
        spread = np.sqrt((relative ** 2).sum(-1).mean(-1))[..., None, None]   # (B, T, 1, 1)
        jitter = rng.uniform(*det.jitter, size)[:, None, None, None]
        noise = rng.normal(size=true_rays.shape) * jitter * spread
        rays = true_rays + noise
        error = np.linalg.norm(noise, axis=-1) / spread[..., 0]
        confidence = np.clip(0.95 - 2.0 * error + rng.normal(0, 0.05, error.shape), 0.35, 1.0)

        lost = rng.random((size, window, 17)) < rng.uniform(*det.drop_rate, size)[:, None, None]
        limb = rng.integers(0, len(LIMBS), size)
        lose_limb = rng.random(size) < det.limb_loss
        for index, joints in enumerate(LIMBS):
            chosen = lose_limb & (limb == index)
            lost[np.ix_(chosen, np.arange(window), joints)] = True
        outside = (np.abs(true_rays) > half_fov).any(-1)
        lost |= outside
        wild = true_rays + rng.normal(size=true_rays.shape) * det.lost_noise * spread
        # A detector keeps an out-of-image joint near the image's edge.
        wild = np.clip(wild, -half_fov * 1.05, half_fov * 1.05)
        rays = np.where(lost[..., None], wild, rays)
        confidence = np.where(lost, rng.uniform(0, det.lost_confidence, lost.shape), confidence)

        swap = rng.random((size, window)) < det.swap
        pair = np.array(SWAP_PAIRS)[rng.integers(0, len(SWAP_PAIRS), (size, window))]   # (B, T, 2)
        b, t = np.nonzero(swap)
        a_joint, b_joint = pair[b, t, 0], pair[b, t, 1]
        rays[b, t, a_joint], rays[b, t, b_joint] = rays[b, t, b_joint].copy(), rays[b, t, a_joint].copy()

        confidence = confidence.astype(np.float32)
        inputs, rotations = normalise_pose2d(rays, confidence)
        last = points[:, -1]
        relative = (last - root_of(last)[:, None, :]) @ rotations[:, -1].transpose(0, 2, 1)
        targets = (relative / (stature * STATURE_RATIO)[:, None, None]).astype(np.float32)
        return Batch(inputs=inputs, targets=targets, rotation=rotations[:, -1], rays=rays,
                     confidence=confidence, camera_points=last, stature=stature)


def _look_at(forward: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations world (Y up) -> camera (x right, y down, z along `forward`), level."""
    forward = forward / np.linalg.norm(forward, axis=1, keepdims=True)
    right = np.cross(forward, (0.0, 1.0, 0.0))
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    down = np.cross(forward, right)
    return np.stack([right, down, forward], axis=1)


def _axis_rotation(axis: int, angle: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations by `angle` (radians) about camera axis 0 (x), 1 (y) or 2 (z)."""
    c, s = np.cos(angle), np.sin(angle)
    out = np.zeros((len(angle), 3, 3))
    i, j = [a for a in range(3) if a != axis]
    out[:, axis, axis] = 1
    out[:, i, i], out[:, j, j] = c, c
    out[:, i, j], out[:, j, i] = -s, s
    return out
