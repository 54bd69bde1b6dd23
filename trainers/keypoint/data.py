"""Training samples: (network input, target heatmaps, joint weights) for each annotated person.

A sample is cut from its image by streampose.vision.topdown.warp_crops (the keypoints stage's
bilinear warp, black outside the frame) through the augmented affine (trainers.keypoint.augment),
normalised by streampose.vision.preprocess.normalize_crops with the infer_cfg.yml the model
will be exported with, and its joints are moved by the same affine to heatmap pixels
(input pixels / OUTPUT_STRIDE) and encoded (trainers.keypoint.targets).

Randomness comes from (seed, epoch, index), so a sample is the same whichever loader process
makes it, and a resumed run sees the epochs it would have seen.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from streampose.models.infer_cfg import parse_infer_cfg
from streampose.vision import topdown
from streampose.vision.heatmap import flip_order
from streampose.vision.preprocess import normalize_crops
from trainers.keypoint.augment import jitter_colour, random_affine
from trainers.keypoint.coco import DatasetError, KeypointSamples
from trainers.keypoint.config import OUTPUT_STRIDE, TrainConfig
from trainers.keypoint.targets import encode_heatmaps


class ImageCache:
    """Decoded images by path, the `capacity` most recently used kept (BGR uint8)."""

    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        self._images: OrderedDict[Path, np.ndarray] = OrderedDict()

    def get(self, path: Path) -> np.ndarray:
        image = self._images.pop(path, None)
        if image is None:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise DatasetError(f"cannot decode image {path}")
        self._images[path] = image
        while len(self._images) > self.capacity:
            self._images.popitem(last=False)
        return image


class TrainingSamples:
    """Indexable training samples (a paddle.io.Dataset by duck typing: __len__, __getitem__).

    Item i -> (image (3, H, W) float32, heatmaps (K, h, w) float32, weights (K,) float32: the
    joint's loss weight where it is labelled and on the map, else 0).
    """

    def __init__(self, samples: KeypointSamples, config: TrainConfig):
        self.samples = samples
        self.config = config
        self.epoch = 0
        self._cache = ImageCache(config.data.image_cache)
        self._infer_cfg = parse_infer_cfg(config.infer_cfg, "training settings")
        self._flip = flip_order(config.keypoints.num_joints, config.keypoints.flip_pairs)
        self._joint_weights = np.asarray(config.keypoints.joint_weights, np.float32)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        config = self.config
        rng = np.random.default_rng([config.schedule.seed, self.epoch, index])
        image = self._cache.get(self.samples.image_files[self.samples.image_index[index]])
        joints = self.samples.keypoints[index]
        matrix, flipped = random_affine(self.samples.boxes[index], joints, config.input_size,
                                        config.data.expand_ratio, config.augment, config.keypoints, rng)
        crop = topdown.warp_crops([image], np.zeros(1, int), matrix[None], config.input_size)
        crop = jitter_colour(crop, config.augment.colour, rng)
        tensor = normalize_crops(crop, self._infer_cfg.preprocess[1:], self._infer_cfg.channel_order)[0]
        points = topdown.apply_affine(joints[None, :, :2], matrix[None])[0] / OUTPUT_STRIDE
        labelled = joints[:, 2] > 0
        if flipped:
            points, labelled = points[self._flip], labelled[self._flip]
        heatmaps, weights = encode_heatmaps(points[None], labelled[None], config.heatmap_size, config.sigma)
        return tensor, heatmaps[0], weights[0] * self._joint_weights


def plain_crops(samples: KeypointSamples, config: TrainConfig, limit: int) -> np.ndarray:
    """Up to `limit` un-augmented network inputs (N, 3, H, W) float32, persons spread over the set
    (for measuring batch-norm statistics of imported weights)."""
    cache = ImageCache(config.data.image_cache)
    infer_cfg = parse_infer_cfg(config.infer_cfg, "training settings")
    chosen = np.linspace(0, len(samples) - 1, min(limit, len(samples))).round().astype(int)
    matrices = topdown.crop_affines(samples.boxes[chosen], config.data.expand_ratio, config.input_size)[0]
    crops = [topdown.warp_crops([cache.get(samples.image_files[samples.image_index[i]])], np.zeros(1, int),
                                matrices[row:row + 1], config.input_size) for row, i in enumerate(chosen)]
    return normalize_crops(np.concatenate(crops), infer_cfg.preprocess[1:], infer_cfg.channel_order)
