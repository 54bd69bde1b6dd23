"""BVH motion capture files: parsing and forward kinematics.

A BVH file holds a joint hierarchy (each joint an OFFSET from its parent and the CHANNELS its
frames animate) and one row of channel values per frame. Rotation channels apply in the order
listed (intrinsic: "Zrotation Xrotation Yrotation" is R = Rz @ Rx @ Ry), in degrees; position
channels, where a joint has them, replace its OFFSET. With every rotation zero the skeleton
stands in its rest pose, made of the offsets alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

_AXES = {"Xrotation": "X", "Yrotation": "Y", "Zrotation": "Z"}
_POSITIONS = ("Xposition", "Yposition", "Zposition")


class BvhError(ValueError):
    """A file that is not a BVH file this parser understands."""


@dataclass(frozen=True)
class Skeleton:
    """The joint hierarchy, in file order (parents before children).

    names:    joint names; an End Site is named "<parent>_end".
    parents:  (J,) int, index of each joint's parent, -1 for the root.
    offsets:  (J, 3) float64, rest position relative to the parent, file units.
    channels: per joint, its channel names in file order.
    first_channel: (J,) int, column of each joint's first channel in a frame row.
    """

    names: tuple[str, ...]
    parents: np.ndarray
    offsets: np.ndarray
    channels: tuple[tuple[str, ...], ...]
    first_channel: np.ndarray

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise BvhError(f"no joint named {name!r}; joints: {', '.join(self.names)}") from None


@dataclass(frozen=True)
class Motion:
    """A parsed BVH file.

    values:     (F, C) float64, one row of channel values per frame.
    frame_time: seconds between frames.
    """

    path: Path
    skeleton: Skeleton
    values: np.ndarray
    frame_time: float

    @property
    def fps(self) -> float:
        return 1.0 / self.frame_time


def read_bvh(path: Path) -> Motion:
    """Parse a BVH file. Raises BvhError naming the file and what is wrong."""
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    head, sep, motion = text.partition("MOTION")
    if not sep or "HIERARCHY" not in head:
        raise BvhError(f"{path}: not a BVH file (no HIERARCHY and MOTION sections)")
    skeleton = _parse_hierarchy(head.split(), path)
    lines = motion.strip().split("\n", 2)
    if len(lines) < 3 or not lines[0].startswith("Frames:") or not lines[1].startswith("Frame Time:"):
        raise BvhError(f"{path}: MOTION must start with 'Frames:' and 'Frame Time:' lines")
    frames = int(lines[0].split(":")[1])
    frame_time = float(lines[1].split(":")[1])
    values = np.array(lines[2].split(), np.float64)
    columns = sum(len(c) for c in skeleton.channels)
    if frames <= 0 or frame_time <= 0 or values.size < frames * columns:
        raise BvhError(f"{path}: {values.size} values for {frames} frames of {columns} channels "
                       f"(frame time {frame_time})")
    return Motion(path, skeleton, values[:frames * columns].reshape(frames, columns), frame_time)


def _parse_hierarchy(tokens: list[str], path: Path) -> Skeleton:
    names, parents, offsets, channels = [], [], [], []
    stack: list[int] = []
    i = tokens.index("HIERARCHY") + 1
    try:
        while i < len(tokens):
            token = tokens[i]
            if token in ("ROOT", "JOINT"):
                names.append(tokens[i + 1])
                i += 2
            elif token == "End":
                names.append(f"{names[stack[-1]]}_end")
                i += 2
            elif token == "{":
                parents.append(stack[-1] if stack else -1)
                stack.append(len(names) - 1)
                offsets.append([0.0, 0.0, 0.0])
                channels.append(())
                i += 1
            elif token == "}":
                stack.pop()
                i += 1
            elif token == "OFFSET":
                offsets[stack[-1]] = [float(v) for v in tokens[i + 1:i + 4]]
                i += 4
            elif token == "CHANNELS":
                count = int(tokens[i + 1])
                channels[stack[-1]] = tuple(tokens[i + 2:i + 2 + count])
                i += 2 + count
            else:
                raise BvhError(f"{path}: unexpected {token!r} in HIERARCHY")
    except (IndexError, ValueError) as exc:
        raise BvhError(f"{path}: malformed HIERARCHY near token {i}: {exc}") from None
    if stack or not names:
        raise BvhError(f"{path}: unbalanced braces in HIERARCHY")
    for joint, names_ in zip(names, channels):
        unknown = set(names_) - set(_AXES) - set(_POSITIONS)
        if unknown:
            raise BvhError(f"{path}: joint {joint}: unknown channels {sorted(unknown)}")
    first = np.cumsum([0, *map(len, channels)])[:-1]
    return Skeleton(tuple(names), np.array(parents), np.array(offsets), tuple(channels), first)


def forward_kinematics(motion: Motion, joints: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """World positions and orientations of `joints` in every frame.

    Returns positions (F, len(joints), 3) in file units and rotations (F, len(joints), 3, 3),
    each joint's world rotation (rest-pose directions -> world). Only the joints' ancestors are
    computed; each joint is one vectorised step over all frames.
    """
    skeleton = motion.skeleton
    wanted = [skeleton.index(name) for name in joints]
    needed = sorted({a for j in wanted for a in _ancestors(skeleton, j)})
    frames = len(motion.values)
    positions: dict[int, np.ndarray] = {}
    rotations: dict[int, np.ndarray] = {}
    for j in needed:
        translation, local = _local_transform(motion, j)
        parent = skeleton.parents[j]
        if parent < 0:
            positions[j], rotations[j] = np.broadcast_to(translation, (frames, 3)), local
        else:
            positions[j] = positions[parent] + np.einsum("fij,fj->fi", rotations[parent],
                                                         np.broadcast_to(translation, (frames, 3)))
            rotations[j] = rotations[parent] @ local
    return (np.stack([positions[j] for j in wanted], axis=1),
            np.stack([rotations[j] for j in wanted], axis=1))


def rest_positions(skeleton: Skeleton, joints: list[str]) -> np.ndarray:
    """(len(joints), 3) positions in the rest pose (all rotations zero, offsets as translations)."""
    wanted = [skeleton.index(name) for name in joints]
    return np.stack([sum(skeleton.offsets[a] for a in _ancestors(skeleton, j)) for j in wanted])


def _ancestors(skeleton: Skeleton, joint: int) -> list[int]:
    chain = []
    while joint >= 0:
        chain.append(joint)
        joint = skeleton.parents[joint]
    return chain


def _local_transform(motion: Motion, joint: int) -> tuple[np.ndarray, np.ndarray]:
    """Translation ((3,) or (F, 3)) and rotation (F, 3, 3) of a joint relative to its parent."""
    skeleton = motion.skeleton
    names = skeleton.channels[joint]
    columns = motion.values[:, skeleton.first_channel[joint]:skeleton.first_channel[joint] + len(names)]
    translation = skeleton.offsets[joint]
    if any(n in _POSITIONS for n in names):
        translation = translation.copy() * np.ones((len(columns), 1))
        for axis, name in enumerate(_POSITIONS):
            if name in names:
                translation[:, axis] = columns[:, names.index(name)]
    rotation_columns = [i for i, n in enumerate(names) if n in _AXES]
    if not rotation_columns:
        return translation, np.broadcast_to(np.eye(3), (len(columns), 3, 3))
    order = "".join(_AXES[names[i]] for i in rotation_columns)  # upper case: intrinsic rotations
    return translation, Rotation.from_euler(order, columns[:, rotation_columns], degrees=True).as_matrix()
