"""OKS average precision of a keypoint model on a COCO keypoint set, on the ground-truth boxes.

Predictions come from the keypoints stage's own PoseEstimator (streampose.stages.keypoints):
the same crop, normalisation, batching, flip test, DARK decoding and mapping back to frame
pixels as in a running graph. A network still in training is wrapped as an Engine
(`LayerEngine`); an exported model folder loads through the pipeline's engines. Scoring is
pycocotools' COCOeval ("keypoints") with the keypoint set's OKS sigmas; each person's score is
the stage's pose score (mean joint confidence).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from streampose.engines import Engine, TensorInfo, load_engine
from streampose.models.folder import ModelFolder, load_model_folder
from streampose.models.infer_cfg import parse_infer_cfg
from streampose.stages.keypoints import PoseEstimator
from trainers.keypoint.coco import KeypointSamples
from trainers.keypoint.config import TrainConfig
from trainers.keypoint.data import ImageCache
from trainers.keypoint.models import heatmap_shape

STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
# Persons per estimator call (images are grouped until they hold about this many).
PERSONS_PER_CALL = 32


class LayerEngine(Engine):
    """A Paddle network in dynamic-graph mode behind the Engine interface (eval mode, no gradients)."""

    name = "paddle-dygraph"

    def __init__(self, layer, folder: ModelFolder, input_size: tuple[int, int], num_joints: int, max_batch: int):
        width, height = input_size
        inputs = [TensorInfo("image", (-1, 3, height, width), np.dtype(np.float32))]
        outputs = [TensorInfo("heatmaps", (-1, *heatmap_shape(input_size, num_joints)), np.dtype(np.float32))]
        super().__init__(folder, inputs, outputs, max_batch, batch_capable=True)
        self.layer = layer

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import paddle

        with paddle.no_grad():
            return {"heatmaps": self.layer(paddle.to_tensor(feed["image"])).astype("float32").numpy()}


def layer_estimator(layer, config: TrainConfig, max_batch: int = PERSONS_PER_CALL) -> PoseEstimator:
    """The keypoints stage's estimator around a network in training (put in eval mode by the caller)."""
    infer_cfg = parse_infer_cfg(config.infer_cfg, "training settings")
    folder = ModelFolder(path=Path("."), name="network in training", format="paddle3", network=Path("."),
                         weights=None, config=infer_cfg)
    engine = LayerEngine(layer, folder, config.input_size, config.keypoints.num_joints, max_batch)
    return PoseEstimator(folder, engine, config.data.expand_ratio, config.use_dark, config.flip_test)


def folder_estimator(folder: Path, expand_ratio: float, engine: str = "auto", threads: int = 0,
                     use_dark: bool = True, flip_test: bool = False) -> PoseEstimator:
    """The keypoints stage's estimator on an exported model folder, CPU, fp32."""
    model = load_model_folder(Path(folder))
    loaded = load_engine(model, engine=engine, threads=threads, max_batch=PERSONS_PER_CALL * (2 if flip_test else 1),
                         fallback="stop")
    return PoseEstimator(model, loaded, expand_ratio, use_dark, flip_test)


def predict(estimator: PoseEstimator, samples: KeypointSamples) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (N, K, 3) (x, y frame pixels, confidence) and pose scores (N,) of every person
    of `samples`, from its ground-truth box."""
    keypoints = np.zeros((len(samples), estimator.num_keypoints, 3), np.float32)
    scores = np.zeros(len(samples), np.float32)
    cache = ImageCache(1)
    groups, group, count = [], [], 0
    for image_row in np.unique(samples.image_index):
        group.append(image_row)
        count += int((samples.image_index == image_row).sum())
        if count >= PERSONS_PER_CALL:
            groups.append(group)
            group, count = [], 0
    groups += [group] if group else []
    for group in groups:
        persons = np.flatnonzero(np.isin(samples.image_index, group))
        images = [cache.get(samples.image_files[row]) for row in group]
        image_index = np.searchsorted(group, samples.image_index[persons])
        keypoints[persons], scores[persons] = estimator.estimate(images, image_index, samples.boxes[persons])
    return keypoints, scores


def oks_ap(samples: KeypointSamples, keypoints: np.ndarray, scores: np.ndarray,
           sigmas: tuple[float, ...]) -> dict[str, float]:
    """COCOeval keypoint statistics (STAT_NAMES, 0..1) of predictions for `samples`' persons,
    over the images those persons are in."""
    from pycocotools.cocoeval import COCOeval

    coco = samples.coco
    category = coco.getCatIds()[0]
    results = [{"image_id": int(samples.image_ids[row]), "category_id": category,
                "keypoints": kp.astype(float).ravel().tolist(), "score": float(score)}
               for row, kp, score in zip(samples.image_index, keypoints, scores)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
        detections = coco.loadRes(results)
        evaluation = COCOeval(coco, detections, "keypoints")
        evaluation.params.kpt_oks_sigmas = np.asarray(sigmas, np.float64)
        evaluation.params.imgIds = sorted(int(i) for i in samples.image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: round(float(value), 4) for name, value in zip(STAT_NAMES, evaluation.stats)}


def evaluate(estimator: PoseEstimator, samples: KeypointSamples, sigmas: tuple[float, ...]) -> dict[str, float]:
    """OKS AP etc. of `estimator` on `samples` (see oks_ap)."""
    keypoints, scores = predict(estimator, samples)
    return oks_ap(samples, keypoints, scores, sigmas)
