"""The keypoint stage: top-down 2D pose for every person of every frame in the batch.

All selected persons of all frames are cropped (vision.topdown), run through the heatmap
network in batches, decoded (vision.heatmap) and mapped back to frame pixels.

A frame the detector skipped (`every_n_frames`, `frame.detected` False) gets boxes around its
stream's previous frame's keypoints first. Stages see a stream's frames in order, so that
previous frame is always the one before, even when it is in the same batch (the batch is then
estimated in two or more waves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streampose.engines import Engine
from streampose.frame import NUM_KEYPOINTS, Frame, Persons
from streampose.graph import schema
from streampose.models.folder import ModelFolder
from streampose.runtime.stage import Stage, StageContext
from streampose.vision import heatmap, topdown
from streampose.vision.detections import clip_boxes
from streampose.vision.preprocess import CROP_OPS, check_ops, normalize_crops

# Most crops in one engine run (more persons run in several). Runs take power-of-two
# batches (13 crops: 8 + 4 + 1), so an engine that compiles per batch size compiles at most
# six sizes instead of one for every person count a stream shows.
MAX_CROPS_PER_RUN = 32
# Fewer crops than this run as one batch even when the engine could run several at once: a
# split batch costs more CPU per crop, which pays only for large ones (TinyPose-128x96, bf16,
# 1 thread per run, 2 cores: 8 crops as 4 + 4 at once 11.2 ms instead of 20.2 for 7% more CPU;
# 4 crops as 2 + 2 8.9 instead of 11.0 ms for 25% more).
PARALLEL_MIN_CROPS = 8

# Boxes refitted to keypoints: joints more confident than this count, at least MIN_JOINTS of
# them, and the box around them grows on each side by BOX_MARGIN (x, y) of its width and
# height. Joints are centres: the body, head top and feet reach beyond them; the margins are
# the median gaps between PicoDet's boxes and TinyPose's joints measured on the shared videos
# (0.2 of the joints' width left and right, 0.1 of their height above and below).
KEYPOINT_CONFIDENCE = 0.3
MIN_JOINTS = 3
BOX_MARGIN = np.array([0.2, 0.1], np.float32)


@dataclass
class _Previous:
    """A stream's last frame's persons, to refit a skipped frame's boxes to (every_n_frames)."""

    persons: Persons | None = None


class KeypointConfigError(ValueError):
    """The model cannot serve as a top-down keypoint model."""


class PoseEstimator:
    """A top-down heatmap network with its crop and decoding: boxes in frames -> keypoints."""

    def __init__(self, folder: ModelFolder, engine: Engine, expand_ratio: float, use_dark: bool, flip_test: bool):
        config = folder.config
        folder.require_task("keypoints", "a keypoint model", KeypointConfigError)
        affine = config.op("TopDownEvalAffine")
        if affine is None or config.preprocess[0] is not affine:
            raise KeypointConfigError(f"{config.source}: a top-down model's Preprocess must start with "
                                      "TopDownEvalAffine")
        if affine.params.get("use_udp", False):
            raise KeypointConfigError(f"{config.source}: TopDownEvalAffine use_udp is not supported")
        check_ops(config.preprocess[1:], CROP_OPS, config.source)
        self.folder = folder
        self.config = config
        self.engine = engine
        self.input_size: tuple[int, int] = tuple(affine.params["trainsize"])  # (width, height)
        self.expand_ratio = expand_ratio
        self.use_dark = use_dark
        self.flip_test = flip_test
        images = [t for t in engine.inputs if len(t.shape) == 4]
        maps = [t for t in engine.outputs if len(t.shape) == 4]
        if len(engine.inputs) != 1 or not images or len(maps) != 1:
            raise KeypointConfigError(f"model {folder.name}: expected one image input (N, 3, H, W) and one heatmap "
                                      f"output (N, K, h, w), got inputs {[list(t.shape) for t in engine.inputs]} "
                                      f"and outputs {[list(t.shape) for t in engine.outputs]}")
        self.image_input, self.heatmap_output = images[0].name, maps[0].name
        self.num_keypoints = maps[0].shape[1] if maps[0].shape[1] > 0 else NUM_KEYPOINTS
        network_hw = images[0].shape[2:]
        if all(d > 0 for d in network_hw) and tuple(network_hw) != self.input_size[::-1]:
            raise KeypointConfigError(
                f"model {folder.name}: {config.source} TopDownEvalAffine trainsize is {self.input_size[0]}x"
                f"{self.input_size[1]} (width x height) but the network input is {network_hw[1]}x{network_hw[0]}")
        self.crops_per_run = _power_of_two_floor(engine.max_batch // (2 if flip_test else 1))

    def estimate(self, images: list[np.ndarray], image_index: np.ndarray,
                 boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints of persons boxes[i] (x1, y1, x2, y2, frame pixels) in images[image_index[i]].

        Returns keypoints (N, K, 3) float32, x, y in frame pixels and confidence 0..1, and
        pose scores (N,) float32, the mean confidence.
        """
        tensor, center, scale = self.network_input(images, image_index, boxes)
        maps = self._heatmaps([tensor[start:end] for start, end in _runs(len(tensor), self._largest_run(len(tensor)))])
        peaks, confidence = heatmap.decode_heatmaps(maps, self.use_dark)
        to_frame = topdown.affine_matrices(center, scale, (maps.shape[3], maps.shape[2]), inverse=True)
        keypoints = np.empty((len(boxes), maps.shape[1], 3), np.float32)
        keypoints[..., :2] = topdown.apply_affine(peaks, to_frame)
        keypoints[..., 2] = np.clip(confidence, 0, 1)
        return keypoints, keypoints[..., 2].mean(axis=1)

    def network_input(self, images: list[np.ndarray], image_index: np.ndarray,
                      boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The network input for persons boxes[i] (x1, y1, x2, y2, frame pixels) in
        images[image_index[i]]: tensor (N, 3, H, W) float32, and the crops' center (N, 2)
        (frame pixels) and scale (N, 2) (topdown.PIXEL_STD pixels) that map heatmaps back."""
        to_crop, center, scale = topdown.crop_affines(boxes, self.expand_ratio, self.input_size)
        crops = topdown.warp_crops(images, image_index, to_crop, self.input_size)
        return normalize_crops(crops, self.config.preprocess[1:], self.config.channel_order), center, scale

    def _largest_run(self, crops: int) -> int:
        """Crops in the largest engine run: as many as the engine takes, or, when it can have
        several runs going at once and there are crops enough, about an equal share per run."""
        if self.engine.parallel == 1 or crops < PARALLEL_MIN_CROPS:
            return self.crops_per_run
        return min(self.crops_per_run, _power_of_two_floor(-(-crops // self.engine.parallel)))

    def _heatmaps(self, runs: list[np.ndarray]) -> np.ndarray:
        """Heatmaps (N, K, h, w) of the crops of `runs` (each (n, 3, H, W)), concatenated."""
        if self.flip_test:
            runs = [np.concatenate([tensor, tensor[..., ::-1]]) for tensor in runs]
        outputs = self.engine.run_parallel([{self.image_input: tensor} for tensor in runs])
        maps = [output[self.heatmap_output] for output in outputs]
        if self.flip_test:
            maps = [(m[:len(m) // 2] + heatmap.flip_back(m[len(m) // 2:])) * 0.5 for m in maps]
        return np.concatenate(maps)


def _power_of_two_floor(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def _runs(total: int, largest: int) -> list[tuple[int, int]]:
    """[start, end) ranges covering 0..total, each a power of two no larger than `largest`."""
    ranges, start = [], 0
    while start < total:
        size = min(largest, _power_of_two_floor(total - start))
        ranges.append((start, start + size))
        start += size
    return ranges


def choose_persons(persons: Persons, min_score: float, max_persons: int) -> np.ndarray:
    """Indices of the persons given keypoints: score >= min_score, largest boxes first."""
    eligible = np.flatnonzero(persons.scores >= min_score)
    sides = persons.boxes[eligible, 2:] - persons.boxes[eligible, :2]
    order = np.argsort(-(sides[:, 0] * sides[:, 1]), kind="stable")
    return eligible[order[:max_persons]]


class KeypointStage(Stage):
    def __init__(self, stage_id: str, params: schema.Keypoints, context: StageContext):
        super().__init__(stage_id, params, context)
        # With runs going at once, each takes a share of the crops: no larger batch is compiled,
        # whose buffers each parallel run would hold again (crowd_walking_overhead's peak memory
        # 695 MB with batches up to 32 at 2 runs, 555 MB with one run).
        largest = MAX_CROPS_PER_RUN // context.parallel_runs
        crops = _power_of_two_floor(max(1, min(largest, params.batch.max_size * params.max_persons)))
        runs = 2 if params.flip_test else 1  # a flip test runs each crop twice, in one batch
        folder, engine = self.load_model(max_batch=crops * runs,
                                         batch_sizes=[(1 << i) * runs for i in range(crops.bit_length())])
        self.estimator = PoseEstimator(folder, engine, params.expand_ratio, params.use_dark, params.flip_test)
        self.log.info("%s, crops of %dx%d", engine.describe(), *self.estimator.input_size)
        self.previous = self.per_stream(_Previous)

    def process(self, frames: list[Frame]) -> None:
        wave: list[Frame] = []
        for frame in frames:
            if not frame.detected:
                if any(f.stream == frame.stream for f in wave):
                    self._estimate(wave)  # the previous frame's keypoints first
                    wave = []
                previous = self.previous.get(frame).persons
                if previous is not None:
                    frame.persons = boxes_from_keypoints(previous, frame.width, frame.height)
            wave.append(frame)
        self._estimate(wave)

    def _estimate(self, frames: list[Frame]) -> None:
        chosen = [choose_persons(f.persons, self.params.min_box_score, self.params.max_persons) for f in frames]
        counts = [len(c) for c in chosen]
        if sum(counts):
            boxes = np.concatenate([f.persons.boxes[c] for f, c in zip(frames, chosen)])
            image_index = np.repeat(np.arange(len(frames)), counts)
            keypoints, scores = self.estimator.estimate([f.image for f in frames], image_index, boxes)
        starts = np.cumsum([0, *counts])
        for frame, picked, start, end in zip(frames, chosen, starts[:-1], starts[1:]):
            persons = frame.persons
            frame_keypoints = np.zeros((len(persons), self.estimator.num_keypoints, 3), np.float32)
            frame_scores = np.zeros(len(persons), np.float32)
            if end > start:
                frame_keypoints[picked] = keypoints[start:end]
                frame_scores[picked] = scores[start:end]
            persons.pose_scores = frame_scores
            persons.keypoints = frame_keypoints
            self.previous.get(frame).persons = persons

    def close(self) -> None:
        self.estimator.engine.close()


def boxes_from_keypoints(persons: Persons, width: int, height: int) -> Persons:
    """Persons whose boxes enclose their confident keypoints (plus a margin), clipped to the
    frame; persons without enough confident keypoints keep their boxes."""
    boxes = persons.boxes.copy()
    if persons.keypoints is not None and len(persons):
        confident = persons.keypoints[..., 2] > KEYPOINT_CONFIDENCE              # (N, K)
        usable = confident.sum(axis=1) >= MIN_JOINTS
        xy = persons.keypoints[..., :2]
        low = np.where(confident[..., None], xy, np.inf).min(axis=1)             # (N, 2)
        high = np.where(confident[..., None], xy, -np.inf).max(axis=1)
        margin = (high - low) * BOX_MARGIN
        fitted = np.concatenate([low - margin, high + margin], axis=1)
        boxes[usable] = fitted[usable]
    return Persons.from_boxes(clip_boxes(boxes, width, height), persons.scores)
