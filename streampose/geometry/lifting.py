"""The contract between the 2D->3D lifter network, its trainer and the lift3d stage.

Input: a window of T poses per person, each COCO-17 joint as normalised image coordinates
(x/z, y/z: pixels with the intrinsics and lens distortion removed), normalised per frame by
`normalise_pose2d`: seen by a virtual camera turned about the lens centre to look straight at
the root (the hip midpoint), which removes where in the image the person stands; then
root-relative and scale-free; with the detector's confidence as a third value: (N, T, 17, 3)
float32. The last frame of the window is the one lifted.

Output: (N, 17, 3) float32, the joints of the window's last frame relative to the root, in the
axes of that frame's virtual camera (x right, y down, z towards the root; `to_camera` turns them
back to the real camera's), in skeleton lengths (`skeleton_length`: shank + thigh, mean of both
sides, + hip midpoint to shoulder midpoint, a length that does not change with pose). Times
`STATURE_RATIO` x a person's standing height in metres gives metres.

Placement: the root-relative skeleton in metres is moved to where it projects onto the 2D
joints (`place_by_height`), which recovers the root's depth from the person's assumed height,
or, when the camera knows where the floor is, with the lower foot on the floor
(`place_on_ground`), which estimates the person's size too.
"""

from __future__ import annotations

import numpy as np

LEFT_SHOULDER, RIGHT_SHOULDER = 5, 6
LEFT_HIP, RIGHT_HIP = 11, 12
LEFT_KNEE, RIGHT_KNEE = 13, 14
LEFT_ANKLE, RIGHT_ANKLE = 15, 16
# Joint order after mirroring left and right.
FLIP_PERMUTATION = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)

# skeleton_length / standing height. Measured on the two motion-capture rigs with eye joints (a
# CMU subject retargeted to a Character Creator rig and to a DAZ rig: 0.78-0.80); Winter's
# segment proportions give 0.75-0.78.
STATURE_RATIO = 0.78
# Ankle joint centre above the sole, / standing height (Winter: lateral malleolus 0.039).
ANKLE_HEIGHT_RATIO = 0.039
# Smallest root-relative spread of a 2D pose, in normalised image units (a person ~1 px tall at
# f = 1000 px), so that a degenerate pose does not divide by zero.
_MIN_SCALE = 1e-3
# Plausible range of the size `place_on_ground` finds, relative to the assumed height; outside it
# the feet are not on the floor (jumping, sitting, a wrong foot) and the height prior is used.
GROUND_SCALE_RANGE = (0.65, 1.35)


def skeleton_length(joints: np.ndarray) -> np.ndarray:
    """(...) lengths of (..., 17, 3) skeletons: shank + thigh (mean of both sides) + torso."""
    def bone(a, b):
        return np.linalg.norm(joints[..., a, :] - joints[..., b, :], axis=-1)
    legs = (bone(LEFT_ANKLE, LEFT_KNEE) + bone(LEFT_KNEE, LEFT_HIP)
            + bone(RIGHT_ANKLE, RIGHT_KNEE) + bone(RIGHT_KNEE, RIGHT_HIP)) / 2
    hips = (joints[..., LEFT_HIP, :] + joints[..., RIGHT_HIP, :]) / 2
    shoulders = (joints[..., LEFT_SHOULDER, :] + joints[..., RIGHT_SHOULDER, :]) / 2
    return legs + np.linalg.norm(shoulders - hips, axis=-1)


def root_of(joints: np.ndarray) -> np.ndarray:
    """(..., D) hip midpoints of (..., 17, D) joints."""
    return (joints[..., LEFT_HIP, :] + joints[..., RIGHT_HIP, :]) / 2


def virtual_camera(rays: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations from the camera frame to a virtual camera's that looks along the
    root's ray of each pose (..., 17, 2), its x axis kept level with the real camera's."""
    root = root_of(rays)
    x, y = root[..., 0], root[..., 1]
    norm = np.sqrt(x * x + y * y + 1)                  # |(x, y, 1)|
    level = np.sqrt(x * x + 1)                         # |(0, 1, 0) x (x, y, 1)| = |(1, 0, -x)|
    # Rows: right = (0, 1, 0) x forward, down = forward x right, forward = (x, y, 1), each normalised.
    # (Filled in place: nested np.stack calls cost more than the arithmetic for a frame's persons.)
    rotation = np.empty((*x.shape, 3, 3), norm.dtype)
    rotation[..., 0, 0], rotation[..., 0, 1], rotation[..., 0, 2] = 1 / level, 0.0, -x / level
    rotation[..., 1, 0], rotation[..., 1, 1], rotation[..., 1, 2] = (-x * y / (level * norm), level / norm,
                                                                     -y / (level * norm))
    rotation[..., 2, 0], rotation[..., 2, 1], rotation[..., 2, 2] = x / norm, y / norm, 1 / norm
    return rotation


def to_camera(rotation: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (..., K, 3) in a virtual camera's axes -> the real camera's (rotation from
    `virtual_camera`)."""
    return points @ rotation


def normalise_pose2d(rays: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Network input rows from (..., 17, 2) normalised image coordinates and (..., 17)
    confidences: (..., 17, 3) float32 (ray - root) / spread and confidence, as seen by the
    virtual camera looking at the root; and that camera's rotation (..., 3, 3). The spread is
    the confidence-weighted RMS distance of the joints from the root."""
    rotation = virtual_camera(rays)
    directions = np.concatenate([rays, np.ones((*rays.shape[:-1], 1))], axis=-1)
    turned = directions @ np.swapaxes(rotation, -1, -2)
    virtual = turned[..., :2] / turned[..., 2:3]                    # the root is at (0, 0)
    relative = virtual - root_of(virtual)[..., None, :]
    weights = confidence + 1e-6
    spread = np.sqrt((weights * (relative ** 2).sum(-1)).sum(-1) / weights.sum(-1))
    out = np.empty((*rays.shape[:-1], 3), np.float32)
    out[..., :2] = relative / np.maximum(spread, _MIN_SCALE)[..., None, None]
    out[..., 2] = confidence
    return out, rotation


def place_by_height(rays: np.ndarray, weights: np.ndarray, relative: np.ndarray) -> np.ndarray:
    """Root positions (N, 3), metres, camera frame, that make root-relative skeletons
    `relative` (N, 17, 3, metres) project onto `rays` (N, 17, 2), weighted least squares of
    the projection equations tx - x_j tz = x_j Z_j - X_j (and y), weights (N, 17) >= 0."""
    x, y = rays[..., 0], rays[..., 1]
    bx = x * relative[..., 2] - relative[..., 0]
    by = y * relative[..., 2] - relative[..., 1]
    w, wx, wy = weights, weights * x, weights * y
    # Normal equations of the rows (1, 0, -x) and (0, 1, -y), summed over joints.
    sw, swx, swy = w.sum(-1), wx.sum(-1), wy.sum(-1)
    normal = np.empty((len(rays), 3, 3))
    normal[:, 0, 0], normal[:, 0, 1], normal[:, 0, 2] = sw, 0.0, -swx
    normal[:, 1, 0], normal[:, 1, 1], normal[:, 1, 2] = 0.0, sw, -swy
    normal[:, 2, 0], normal[:, 2, 1], normal[:, 2, 2] = -swx, -swy, (wx * x + wy * y).sum(-1)
    normal += 1e-9 * np.eye(3)
    right = np.empty((len(rays), 3))
    right[:, 0], right[:, 1], right[:, 2] = (w * bx).sum(-1), (w * by).sum(-1), -(wx * bx + wy * by).sum(-1)
    return np.linalg.solve(normal, right[..., None])[..., 0]


def place_on_ground(rays: np.ndarray, weights: np.ndarray, relative: np.ndarray,
                    ground_plane: tuple[float, float, float, float], height_m: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like `place_by_height`, but also solves each skeleton's size s with the sole under the
    lower ankle on the floor: s * relative + root projects onto the rays and
    n . (s * (ankle - a n) + root) + d = 0 (a: ankle height of a person of `height_m`).

    relative: root-relative skeletons in metres at the assumed height `height_m`.
    Returns roots (N, 3), scales s (N,) and a mask (N,) of persons whose solution is plausible
    (the ankle is confident and s within GROUND_SCALE_RANGE); elsewhere use place_by_height.
    """
    normal, offset = np.asarray(ground_plane[:3]), ground_plane[3]
    count = len(rays)
    ankles = np.array([LEFT_ANKLE, RIGHT_ANKLE])
    heights = relative[:, ankles] @ normal                              # (N, 2) ankles along the normal
    lower = np.argmin(heights, axis=1)
    foot = heights[np.arange(count), lower]
    # Unknowns (s, tx, ty, tz). Per joint: s (X - x Z) + tx - x tz = 0, and the same in y.
    x, y = rays[..., 0], rays[..., 1]
    X, Y, Z = relative[..., 0], relative[..., 1], relative[..., 2]
    zeros, ones = np.zeros_like(x), np.ones_like(x)
    rows = np.stack([np.stack([X - x * Z, ones, zeros, -x], -1),
                     np.stack([Y - y * Z, zeros, ones, -y], -1)], axis=-2).reshape(count, -1, 4)
    floor_row = np.concatenate([(foot - ANKLE_HEIGHT_RATIO * height_m)[:, None],
                                np.broadcast_to(normal, (count, 3))], axis=1)
    # The floor equation outweighs all the projection equations together: it is what fixes size.
    floor_weight = 10 * weights.sum(1) + 1e-6
    solution = _solve(np.concatenate([rows, floor_row[:, None]], axis=1),
                      np.concatenate([np.zeros((count, rows.shape[1])), np.full((count, 1), -offset)], axis=1),
                      np.concatenate([np.repeat(weights, 2, axis=1), floor_weight[:, None]], axis=1))
    scale, roots = solution[:, 0], solution[:, 1:]
    foot_seen = weights[np.arange(count), ankles[lower]] > 0
    plausible = foot_seen & (scale >= GROUND_SCALE_RANGE[0]) & (scale <= GROUND_SCALE_RANGE[1])
    return roots, scale, plausible


def _solve(rows: np.ndarray, rhs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least squares per person: rows (N, M, U), rhs (N, M), weights (N, M)."""
    weighted = rows * weights[..., None]
    normal = np.einsum("nmi,nmj->nij", weighted, rows)
    # A small ridge keeps persons with almost no confident joints solvable (they are dropped later).
    normal += 1e-9 * np.eye(rows.shape[-1])
    return np.linalg.solve(normal, np.einsum("nmi,nm->ni", weighted, rhs)[..., None])[..., 0]
