"""Bottom-up multi-person pose: heatmap peaks grouped into persons by part affinity fields.

The algorithm of OpenPose (Cao et al., "Realtime Multi-Person 2D Pose Estimation using Part
Affinity Fields", CVPR 2017): every joint type's heatmap gives candidate joints (local maxima);
for every limb (a pair of joint types) each candidate pair is scored by how well the limb's
2-channel affinity field, sampled along the segment between them, points from one to the other;
pairs are matched greedily by score, each candidate used once per limb; then limbs sharing a
joint are chained into persons along the skeleton tree. The cost is one network run per frame
plus grouping that grows with the number of candidates, not one crop per person.

Coordinates: maps are upsampled by UPSAMPLE (cubic) before peaks are found, as Intel's Open
Model Zoo demo does, so peaks fall on a grid of stride / UPSAMPLE input pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from streampose.posenets.layouts import OPENPOSE_18

UPSAMPLE = 4


@dataclass(frozen=True)
class Skeleton:
    """A heatmap + affinity-field network's joints and limbs.

    layout: joint names in heatmap channel order (streampose.posenets.layouts).
    limbs:  (L, 2) joint indices (from, to) in the order persons are assembled: the first limb
            of a chain must come before the limbs that hang from it.
    fields: (L, 2) the affinity-field channels (x, y) of each limb.
    """

    layout: tuple[str, ...]
    limbs: np.ndarray
    fields: np.ndarray


# Lightweight OpenPose / human-pose-estimation-0001: 19 limbs from the neck outwards; the last
# two (shoulder-ear) are redundant links that only fill an ear a person lacks.
OPENPOSE_SKELETON = Skeleton(
    layout=OPENPOSE_18,
    limbs=np.array([(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
                    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17)], np.int64),
    fields=np.array([(12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
                     (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27)],
                    np.int64),
)


@dataclass(frozen=True)
class GroupingSettings:
    """peak_threshold:  heatmap value a joint candidate must exceed (0..1).
    samples:          points sampled along each candidate limb.
    alignment:        an affinity sample counts when its projection on the limb exceeds this.
    min_aligned:      share of samples that must count for a limb to be kept.
    min_joints:       persons with fewer joints are dropped.
    min_score:        persons whose mean joint + limb score is lower are dropped.
    max_candidates:   most candidates per joint type (highest first)."""

    peak_threshold: float = 0.1
    samples: int = 10
    alignment: float = 0.05
    min_aligned: float = 0.8
    min_joints: int = 3
    min_score: float = 0.2
    max_candidates: int = 100


@dataclass
class Candidates:
    """Joint candidates of one image.

    xy:     (M, 2) float32, in upsampled map cells.
    score:  (M,) float32, heatmap value.
    joint:  (M,) int64, joint type.
    """

    xy: np.ndarray
    score: np.ndarray
    joint: np.ndarray


def upsample(maps: np.ndarray) -> np.ndarray:
    """(C, h, w) -> (C, h*UPSAMPLE, w*UPSAMPLE) float32, cubic."""
    channels, height, width = maps.shape
    hwc = np.ascontiguousarray(maps.transpose(1, 2, 0), np.float32)
    # cv2.resize takes at most 512 channels (CV_CN_MAX), far above the 19 + 38 here.
    big = cv2.resize(hwc, (width * UPSAMPLE, height * UPSAMPLE), interpolation=cv2.INTER_CUBIC)
    return big.reshape(height * UPSAMPLE, width * UPSAMPLE, channels).transpose(2, 0, 1)


def find_peaks(heatmaps: np.ndarray, settings: GroupingSettings) -> Candidates:
    """Local maxima (3x3) of each joint's heatmap (J, H, W) above the threshold, at most
    max_candidates per joint, strongest first."""
    dilated = np.stack([cv2.dilate(m, np.ones((3, 3), np.uint8)) for m in heatmaps])
    joint, y, x = np.nonzero((heatmaps >= dilated) & (heatmaps > settings.peak_threshold))
    score = heatmaps[joint, y, x]
    order = np.lexsort((-score, joint))            # by joint, then strongest first
    joint, y, x, score = joint[order], y[order], x[order], score[order]
    rank = np.arange(len(joint)) - np.searchsorted(joint, joint)   # position within its joint type
    keep = rank < settings.max_candidates
    xy = np.stack([x, y], axis=1).astype(np.float32)[keep]
    return Candidates(xy=xy, score=score[keep].astype(np.float32), joint=joint[keep].astype(np.int64))


def score_limb(fields: np.ndarray, start: np.ndarray, end: np.ndarray, height: int,
               settings: GroupingSettings) -> np.ndarray:
    """Affinity of every candidate pair: fields (2, H, W) the limb's x, y affinity; start (A, 2)
    and end (B, 2) candidate positions in map cells. Returns (A, B) scores, -inf where the pair
    is not a limb (too few aligned samples, or a non-positive score)."""
    vector = end[None, :, :] - start[:, None, :]                                    # (A, B, 2)
    length = np.linalg.norm(vector, axis=-1)
    unit = vector / np.maximum(length, 1e-6)[..., None]
    steps = np.linspace(0, 1, settings.samples, dtype=np.float32)
    points = start[:, None, None, :] + vector[:, :, None, :] * steps[None, None, :, None]  # (A, B, S, 2)
    col = np.clip(np.rint(points[..., 0]).astype(np.int64), 0, fields.shape[2] - 1)
    row = np.clip(np.rint(points[..., 1]).astype(np.int64), 0, fields.shape[1] - 1)
    samples = fields[:, row, col]                                                   # (2, A, B, S)
    alignment = samples[0] * unit[..., None, 0] + samples[1] * unit[..., None, 1]   # (A, B, S)
    aligned = alignment > settings.alignment
    count = aligned.sum(-1)
    mean = np.where(aligned, alignment, 0).sum(-1) / np.maximum(count, 1)
    # The paper's length prior: limbs longer than half the image are penalised.
    score = mean + np.minimum(0.5 * height / np.maximum(length, 1e-6) - 1, 0)
    valid = (count >= settings.min_aligned * settings.samples) & (score > 0)
    return np.where(valid, score, -np.inf)


def match_greedy(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a, b) from an (A, B) score matrix, best first, each row and column used once;
    -inf entries never match. Returns (rows, cols, scores)."""
    flat = np.argsort(-scores, axis=None, kind="stable")
    flat = flat[np.isfinite(scores.ravel()[flat])]
    rows, cols = np.unravel_index(flat, scores.shape)
    used_rows = np.zeros(scores.shape[0], bool)
    used_cols = np.zeros(scores.shape[1], bool)
    kept = []
    for i, (a, b) in enumerate(zip(rows, cols)):      # at most min(A, B) kept; candidates are few
        if not used_rows[a] and not used_cols[b]:
            used_rows[a] = used_cols[b] = True
            kept.append(i)
    kept = np.array(kept, np.int64)
    return rows[kept], cols[kept], scores[rows[kept], cols[kept]]


def group(heatmaps: np.ndarray, fields: np.ndarray, skeleton: Skeleton,
          settings: GroupingSettings) -> tuple[np.ndarray, np.ndarray]:
    """Persons in one image from upsampled maps: heatmaps (J, H, W) (joint channels only),
    fields (2L, H, W).

    Returns keypoints (P, J, 3) float32: x, y in upsampled map cells and the heatmap score
    (0 where the person lacks the joint), and (P,) the mean heatmap score of each person's
    joints (0..1)."""
    joints = len(skeleton.layout)
    found = find_peaks(heatmaps[:joints], settings)
    owner = np.full(len(found.joint), -1, np.int64)          # candidate -> person
    members = np.zeros((0, joints), np.int64)                # person -> candidate per joint, -1
    total = np.zeros(0, np.float32)                          # person -> sum of joint and limb scores
    for (joint_a, joint_b), (fx, fy) in zip(skeleton.limbs, skeleton.fields):
        ids_a, ids_b = np.flatnonzero(found.joint == joint_a), np.flatnonzero(found.joint == joint_b)
        if not len(ids_a) or not len(ids_b):
            continue
        limb = score_limb(fields[[fx, fy]], found.xy[ids_a], found.xy[ids_b], heatmaps.shape[1], settings)
        rows, cols, limb_scores = match_greedy(limb)
        a, b = ids_a[rows], ids_b[cols]
        person = owner[a]
        # a belongs to a person without joint b yet: b joins it.
        joins = (person >= 0) & (owner[b] < 0)
        joins[joins] = members[person[joins], joint_b] < 0
        members[person[joins], joint_b] = b[joins]
        owner[b[joins]] = person[joins]
        np.add.at(total, person[joins], found.score[b[joins]] + limb_scores[joins])
        # b belongs to a person without joint a yet: a joins it.
        back = (person < 0) & (owner[b] >= 0)
        back[back] = members[owner[b[back]], joint_a] < 0
        members[owner[b[back]], joint_a] = a[back]
        owner[a[back]] = owner[b[back]]
        np.add.at(total, owner[b[back]], found.score[a[back]] + limb_scores[back])
        person = owner[a]
        # Neither end belongs to anyone: a new person of two joints.
        new = (person < 0) & (owner[b] < 0)
        if new.any():
            start = len(members)
            rows_new = np.full((new.sum(), joints), -1, np.int64)
            rows_new[:, joint_a], rows_new[:, joint_b] = a[new], b[new]
            members = np.concatenate([members, rows_new])
            total = np.concatenate([total, found.score[a[new]] + found.score[b[new]] + limb_scores[new]])
            owner[a[new]] = owner[b[new]] = np.arange(start, len(members))
    count = (members >= 0).sum(1)
    keep = (count >= settings.min_joints) & (total / np.maximum(count, 1) >= settings.min_score)
    members, total, count = members[keep], total[keep], count[keep]
    keypoints = np.zeros((len(members), joints, 3), np.float32)
    has = members >= 0
    keypoints[has, :2] = found.xy[members[has]]
    keypoints[has, 2] = found.score[members[has]]
    return keypoints, (keypoints[..., 2].sum(1) / np.maximum(count, 1)).astype(np.float32)


def decode(heatmaps: np.ndarray, fields: np.ndarray, stride: int, skeleton: Skeleton = OPENPOSE_SKELETON,
           settings: GroupingSettings = GroupingSettings()) -> tuple[np.ndarray, np.ndarray]:
    """Persons from one image's raw network outputs: heatmaps (J+1, h, w) (joints then
    background) and fields (2L, h, w) at `stride` input pixels per cell.

    Returns keypoints (P, J, 3) float32 in network-input pixels with the heatmap score, in the
    skeleton's layout, and (P,) person scores."""
    big_heat, big_fields = upsample(heatmaps[:len(skeleton.layout)]), upsample(fields)
    keypoints, scores = group(big_heat, big_fields, skeleton, settings)
    # Cell u of the upsampled map covers input pixels around (u + 0.5) * stride / UPSAMPLE - 0.5.
    step = stride / UPSAMPLE
    keypoints[..., :2] = (keypoints[..., :2] + 0.5) * step - 0.5
    keypoints[keypoints[..., 2] == 0, :2] = 0
    return keypoints, scores
