"""COCO-format keypoint annotations (read with pycocotools) as arrays of persons.

The file is a COCO "person_keypoints" JSON: `images` (id, file_name, width, height),
`annotations` (image_id, bbox [x, y, w, h], keypoints [x1, y1, v1, ...] with v = 0 not
labelled, 1 labelled but hidden, 2 visible; num_keypoints; area; iscrowd) and one category
whose `keypoints` lists the joint names. Crowd annotations, empty boxes and persons with fewer
than `min_keypoints` labelled joints are left out.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """A COCO file or its images do not make a usable keypoint dataset."""


@dataclass(frozen=True)
class KeypointSamples:
    """All usable persons of one COCO file; row i is one person.

    coco:           the pycocotools COCO object (ground truth for evaluation).
    image_files:    (M,) paths of the images that have persons.
    image_ids:      (M,) COCO ids of those images.
    image_index:    (N,) int, row of image_files each person is in.
    boxes:          (N, 4) float64, x1, y1, x2, y2 in image pixels.
    keypoints:      (N, K, 3) float64, x, y in image pixels and COCO visibility 0/1/2.
    """

    coco: object
    image_files: list[Path]
    image_ids: np.ndarray
    image_index: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


def load_coco_keypoints(annotations: Path, images: Path, joint_names: tuple[str, ...],
                        min_keypoints: int = 1) -> KeypointSamples:
    """Read `annotations`, check it against `joint_names` and that every used image exists under `images`."""
    from pycocotools.coco import COCO

    annotations, images = Path(annotations), Path(images)
    if not annotations.is_file():
        raise DatasetError(f"{annotations}: no such annotation file")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
            coco = COCO(str(annotations))
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise DatasetError(f"{annotations}: not a COCO annotation file: {exc!r}") from None
    categories = [c for c in coco.loadCats(coco.getCatIds()) if c.get("keypoints")]
    if len(categories) != 1:
        raise DatasetError(f"{annotations}: expected one category with a 'keypoints' list, found {len(categories)}")
    names = tuple(categories[0]["keypoints"])
    if len(names) != len(joint_names):
        raise DatasetError(f"{annotations}: the category lists {len(names)} keypoints {list(names)}, the settings "
                           f"{len(joint_names)} (keypoints.names)")
    k = len(names)
    rows, boxes, points = [], [], []
    image_rows: dict[int, int] = {}
    files: list[Path] = []
    for ann in coco.loadAnns(coco.getAnnIds(catIds=[categories[0]["id"]])):
        flat = ann.get("keypoints")
        if flat is None or len(flat) != 3 * k:
            raise DatasetError(f"{annotations}: annotation {ann.get('id')}: 'keypoints' must hold {3 * k} numbers "
                               f"(x, y, v per joint), got {None if flat is None else len(flat)}")
        x, y, w, h = ann["bbox"]
        joints = np.asarray(flat, np.float64).reshape(k, 3)
        if ann.get("iscrowd", 0) or w <= 1 or h <= 1 or (joints[:, 2] > 0).sum() < min_keypoints:
            continue
        image_id = ann["image_id"]
        if image_id not in image_rows:
            file = images / coco.imgs[image_id]["file_name"]
            if not file.is_file():
                raise DatasetError(f"{annotations}: image {image_id}'s file {file} does not exist")
            image_rows[image_id] = len(files)
            files.append(file)
        rows.append(image_rows[image_id])
        boxes.append((x, y, x + w, y + h))
        points.append(joints)
    if not rows:
        raise DatasetError(f"{annotations}: no person with at least {min_keypoints} labelled keypoints")
    return KeypointSamples(coco=coco, image_files=files, image_ids=np.array(list(image_rows), np.int64),
                           image_index=np.array(rows), boxes=np.array(boxes, np.float64),
                           keypoints=np.stack(points))
