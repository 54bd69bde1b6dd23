"""Motion-capture clips as COCO-17 joint tracks (the shared collection in ../shared/mocap).

Each rig maps its joints to COCO's shoulders, elbows, wrists, hips, knees and ankles. Nose, eyes
and ears have no captured counterpart (only some rigs have eye joints): they are placed from the
head joint's position and orientation with fixed offsets, in skeleton lengths (see
streampose.geometry.lifting.skeleton_length) so that one set fits every rig and unit. The offsets
were measured on the Character Creator rig, whose eye joints sit 8-9 cm above and 7-8 cm in
front of its head joint (skeleton length 147 cm).

Every clip is brought to the same frame: Y up, metres-free (skeleton length 1), floor at y = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streampose.frame import COCO_KEYPOINTS
from streampose.geometry.lifting import ANKLE_HEIGHT_RATIO, STATURE_RATIO, root_of, skeleton_length
from trainers.lifter.bvh import Motion, forward_kinematics, read_bvh, rest_positions

# Face points relative to the head joint and its rest-pose axes (up, forward, left), in skeleton
# lengths.
EYES_FROM_HEAD = (0.055, 0.05)          # up, forward: the eye midpoint
HALF_EYE_DISTANCE = 0.0225              # 6.6 cm between the eyes of a 147 cm skeleton
NOSE_FROM_EYES = (-0.025, 0.02)         # up, forward: the nose tip below and ahead of the eyes
EARS_FROM_EYES = (-0.01, -0.06, 0.05)   # up, forward, sideways: ears behind the eyes
BODY_JOINTS = COCO_KEYPOINTS[5:]
# Where a clip's floor is: this quantile of its lower ankle's height (ignores jumps and glitches).
_FLOOR_QUANTILE = 0.02
# A root faster than this (skeleton lengths per second, ~10 m/s) is a cut, not motion: a T-pose
# prepended to the take, or spliced takes. A clip keeps its longest piece without cuts.
_MAX_ROOT_SPEED = 8.0


class MocapError(ValueError):
    """A clip whose skeleton no rig describes, or whose motion makes no sense."""


@dataclass(frozen=True)
class Rig:
    """How one skeleton family names the joints COCO-17 needs.

    body:  bvh joint names of COCO joints 5..16 (shoulders ... ankles), in COCO order.
    head:  the head joint (its rotation orients the face).
    eyes:  (left, right) eye joints, when the rig has them.
    """

    name: str
    body: tuple[str, ...]
    head: str
    eyes: tuple[str, str] | None = None


def _body(names: dict[str, str]) -> tuple[str, ...]:
    """The bvh names of COCO joints 5..16, in COCO order, from a COCO name -> bvh name mapping."""
    parts = ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")
    return tuple(names[f"{side}_{part}"] for part in parts for side in ("left", "right"))


RIGS = (
    Rig("cmu", _body({
        "left_shoulder": "LeftArm", "right_shoulder": "RightArm", "left_elbow": "LeftForeArm",
        "right_elbow": "RightForeArm", "left_wrist": "LeftHand", "right_wrist": "RightHand",
        "left_hip": "LeftUpLeg", "right_hip": "RightUpLeg", "left_knee": "LeftLeg", "right_knee": "RightLeg",
        "left_ankle": "LeftFoot", "right_ankle": "RightFoot"}), head="Head"),
    Rig("character_creator", _body({
        "left_shoulder": "CC_Base_L_Upperarm", "right_shoulder": "CC_Base_R_Upperarm",
        "left_elbow": "CC_Base_L_Forearm", "right_elbow": "CC_Base_R_Forearm", "left_wrist": "CC_Base_L_Hand",
        "right_wrist": "CC_Base_R_Hand", "left_hip": "CC_Base_L_Thigh", "right_hip": "CC_Base_R_Thigh",
        "left_knee": "CC_Base_L_Calf", "right_knee": "CC_Base_R_Calf", "left_ankle": "CC_Base_L_Foot",
        "right_ankle": "CC_Base_R_Foot"}), head="CC_Base_Head", eyes=("CC_Base_L_Eye", "CC_Base_R_Eye")),
    Rig("daz", _body({
        "left_shoulder": "lShldr", "right_shoulder": "rShldr", "left_elbow": "lForeArm", "right_elbow": "rForeArm",
        "left_wrist": "lHand", "right_wrist": "rHand", "left_hip": "lThigh", "right_hip": "rThigh",
        "left_knee": "lShin", "right_knee": "rShin", "left_ankle": "lFoot", "right_ankle": "rFoot"}),
        head="head", eyes=("leftEye", "rightEye")),
    Rig("bandai_namco", _body({
        "left_shoulder": "UpperArm_L", "right_shoulder": "UpperArm_R", "left_elbow": "LowerArm_L",
        "right_elbow": "LowerArm_R", "left_wrist": "Hand_L", "right_wrist": "Hand_R", "left_hip": "UpperLeg_L",
        "right_hip": "UpperLeg_R", "left_knee": "LowerLeg_L", "right_knee": "LowerLeg_R",
        "left_ankle": "Foot_L", "right_ankle": "Foot_R"}), head="Head"),
)

# Collections of the shared mocap folder and their terms.
COLLECTIONS = {
    "cmu_cgspeed_mb": "CMU",
    "cmu_iclone_cc": "CMU",
    "cmu_daz_scaled": "CMU",
    "bandai_namco": "CC BY-NC 4.0 (Bandai Namco Research Motion Dataset): non-commercial",
}


@dataclass(frozen=True)
class Clip:
    """One motion as COCO-17 joints.

    name:   "<collection>/<file stem>".
    fps:    frames per second.
    joints: (F, 17, 3) float32, world frame with Y up, floor at y = 0, in skeleton lengths.
    terms:  the licence terms of its collection.
    """

    name: str
    fps: float
    joints: np.ndarray
    terms: str

    @property
    def duration(self) -> float:
        return (len(self.joints) - 1) / self.fps


def find_clips(root: Path, collections: list[str]) -> list[Path]:
    """The .bvh files of `collections` (folders of `root`), sorted."""
    unknown = sorted(set(collections) - set(COLLECTIONS))
    if unknown:
        raise MocapError(f"unknown mocap collection(s) {unknown}; known: {', '.join(COLLECTIONS)}")
    files = sorted(p for c in collections for p in (root / c).rglob("*.bvh"))
    if not files:
        raise MocapError(f"no .bvh files under {root} in {', '.join(collections)}")
    return files


def load_clip(path: Path, root: Path) -> Clip:
    """Read a BVH file as a Clip; the rig is recognised from its joint names."""
    motion = read_bvh(path)
    rig = next((r for r in RIGS if set(r.body) <= set(motion.skeleton.names)), None)
    if rig is None:
        raise MocapError(f"{path}: no known rig names its joints ({', '.join(r.name for r in RIGS)})")
    joints = coco_joints(motion, rig)
    length = float(np.median(skeleton_length(joints)))
    joints = _longest_piece(joints / length, motion.fps)
    head_up = joints[:, 0, 1] - joints[:, 15:, 1].min(axis=1)
    if np.median(head_up) <= 0:
        raise MocapError(f"{path}: the head is below the ankles; expected a Y-up world")
    ankle = ANKLE_HEIGHT_RATIO / STATURE_RATIO
    joints[..., 1] -= np.quantile(joints[:, 15:, 1].min(axis=1), _FLOOR_QUANTILE) - ankle
    relative = path.relative_to(root)
    return Clip(name=f"{relative.parts[0]}/{path.stem}", fps=motion.fps, joints=joints.astype(np.float32),
                terms=COLLECTIONS[relative.parts[0]])


def _longest_piece(joints: np.ndarray, fps: float) -> np.ndarray:
    """The longest run of frames (F', 17, 3) without a jump of the root."""
    speed = np.linalg.norm(np.diff(root_of(joints), axis=0), axis=-1) * fps
    bounds = [0, *(np.flatnonzero(speed > _MAX_ROOT_SPEED) + 1), len(joints)]
    start, end = max(zip(bounds[:-1], bounds[1:]), key=lambda piece: piece[1] - piece[0])
    return joints[start:end]


def coco_joints(motion: Motion, rig: Rig) -> np.ndarray:
    """(F, 17, 3) COCO-17 joints of a motion in file units, face points synthesised."""
    names = [*rig.body, rig.head, *(rig.eyes or ())]
    positions, rotations = forward_kinematics(motion, names)
    body = positions[:, :12]
    length = np.median(skeleton_length(np.concatenate([np.zeros_like(body[:, :5]), body], axis=1)))
    up, forward, left = _head_axes(motion, rig)
    head_rotation = rotations[:, 12]                                   # (F, 3, 3) rest -> world
    up, forward, left = (head_rotation @ axis for axis in (up, forward, left))  # (F, 3) each

    def along(weights):
        return length * sum(w * axis for w, axis in zip(weights, (up, forward, left)))

    if rig.eyes:
        left_eye, right_eye = positions[:, 13], positions[:, 14]
    else:
        middle = positions[:, 12] + along(EYES_FROM_HEAD)
        left_eye, right_eye = middle + along((0, 0, HALF_EYE_DISTANCE)), middle - along((0, 0, HALF_EYE_DISTANCE))
    eyes = (left_eye + right_eye) / 2
    nose = eyes + along(NOSE_FROM_EYES)
    left_ear = eyes + along(EARS_FROM_EYES)
    right_ear = eyes + along(EARS_FROM_EYES[:2] + (-EARS_FROM_EYES[2],))
    return np.concatenate([np.stack([nose, left_eye, right_eye, left_ear, right_ear], axis=1), body], axis=1)


def _head_axes(motion: Motion, rig: Rig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit up, forward and left directions of the rest pose (in which the head's rotation is
    the identity): up from the hips to the head, left from the right hip to the left."""
    rest = rest_positions(motion.skeleton, [rig.body[6], rig.body[7], rig.head])
    up = rest[2] - (rest[0] + rest[1]) / 2
    up /= np.linalg.norm(up)
    left = rest[0] - rest[1]
    left -= left @ up * up
    left /= np.linalg.norm(left)
    return up, np.cross(left, up), left
