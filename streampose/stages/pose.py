"""The pose stage: persons and keypoints from one network, no detector (streampose.posenets).

Each estimator turns one frame into COCO-17 keypoints (N, 17, 3) in frame pixels, a score per
person (N,) and, blazepose only, 3D joints (N, 17, 4) (else None); the stage boxes them (the
same fit to confident keypoints the keypoint stage uses when the detector skips a frame) and fills `frame.persons` as detector + keypoints would.
Single-person networks (movenet, blazepose) keep, per stream, the crop for the stream's next
frame (`StreamMemory.crop`) in the runtime's per-stream store, which forgets it when the stream's
timeline breaks (lost, ended, reopened, time stepping back).
"""

from __future__ import annotations

import cv2
import numpy as np

from streampose.engines import Engine, load_engine
from streampose.frame import NUM_KEYPOINTS, Frame, Persons
from streampose.graph import schema
from streampose.models.folder import default_search_path, find_model_dir
from streampose.posenets import layouts, movenet, paf
from streampose.posenets.networks import KIND_LAYOUTS, PoseNetworkError, network_files, network_folder
from streampose.runtime.stage import Stage, StageContext
from streampose.stages.keypoints import boxes_from_keypoints

# human-pose-estimation-0001's canvas is padded with this grey: the network subtracts 128 inside,
# so the padding is zero after its normalisation.
OPENPOSE_PAD = 128


class StreamMemory:
    """What a single-person network keeps of a stream: the region to crop from its next frame
    (movenet: (4,) float array; blazepose: a posenets.blazepose.Region), None for the whole image."""

    crop = None


class OpenPoseEstimator:
    """Bottom-up multi-person: the frame fitted into the network input, heatmaps + affinity fields
    grouped into persons (streampose.posenets.paf)."""

    def __init__(self, engine: Engine, params: schema.Pose):
        shapes = {t.name: t.shape for t in engine.outputs}
        inputs = engine.inputs
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(shapes) != 2:
            raise PoseNetworkError(f"{engine.folder.name}: expected one image input (1, 3, H, W) and two outputs "
                                  f"(affinity fields, heatmaps), got inputs {[list(t.shape) for t in inputs]} "
                                  f"and outputs {[list(s) for s in shapes.values()]}")
        skeleton = paf.OPENPOSE_SKELETON
        by_channels = {s[1]: name for name, s in shapes.items()}
        joints, fields = len(skeleton.layout) + 1, 2 * len(skeleton.limbs)
        if set(by_channels) != {joints, fields}:
            raise PoseNetworkError(f"{engine.folder.name}: expected outputs of {joints} heatmap and {fields} "
                                  f"affinity-field channels, got {sorted(by_channels)}")
        self.engine = engine
        self.input = inputs[0].name
        self.input_hw = inputs[0].shape[2:]
        self.heatmaps, self.fields = by_channels[joints], by_channels[fields]
        self.stride = self.input_hw[0] // shapes[self.heatmaps][2]
        self.skeleton = skeleton
        self.settings = paf.GroupingSettings(peak_threshold=params.peak_threshold)
        self.max_persons = params.max_persons

    def estimate(self, frame: Frame, memory: StreamMemory) -> tuple[np.ndarray, np.ndarray, None]:
        image = frame.image
        height, width = self.input_hw
        scale = min(height / image.shape[0], width / image.shape[1])
        resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                             interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        canvas = np.full((height, width, 3), OPENPOSE_PAD, np.uint8)
        canvas[:resized.shape[0], :resized.shape[1]] = resized
        out = self.engine.run({self.input: canvas.transpose(2, 0, 1)[None].astype(np.float32)})
        keypoints, scores = paf.decode(out[self.heatmaps][0], out[self.fields][0], self.stride, self.skeleton,
                                       self.settings)
        keypoints[..., :2] /= scale
        order = np.argsort(-scores, kind="stable")[:self.max_persons]
        return layouts.to_coco(keypoints[order], self.skeleton.layout), scores[order], None


class MoveNetEstimator:
    """MoveNet SinglePose with Google's cropping algorithm (streampose.posenets.movenet)."""

    def __init__(self, engine: Engine, params: schema.Pose):
        inputs, outputs = engine.inputs, engine.outputs
        if (len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != inputs[0].shape[2]
                or inputs[0].shape[3] != 3 or len(outputs) != 1 or outputs[0].shape[-2:] != (NUM_KEYPOINTS, 3)):
            raise PoseNetworkError(f"{engine.folder.name}: expected one square NHWC image input and one output "
                                  f"(1, 1, 17, 3), got inputs {[list(t.shape) for t in inputs]} and outputs "
                                  f"{[list(t.shape) for t in outputs]}")
        self.engine = engine
        self.input, self.output = inputs[0].name, outputs[0].name
        self.size = inputs[0].shape[1]
        self.dtype = inputs[0].dtype
        self.follow = params.follow

    def estimate(self, frame: Frame, memory: StreamMemory) -> tuple[np.ndarray, np.ndarray, None]:
        image = frame.image
        height, width = image.shape[:2]
        crop = memory.crop
        if crop is None or not self.follow:
            crop = movenet.whole_image(width, height)
        tensor = movenet.crop_input(image, crop, self.size)[None].astype(self.dtype)
        output = self.engine.run({self.input: tensor})[self.output].reshape(NUM_KEYPOINTS, 3)
        keypoints = movenet.decode(output, crop)
        memory.crop = movenet.next_crop(keypoints, width, height)
        return keypoints[None], keypoints[None, :, 2].mean(1), None


class PoseStage(Stage):
    def __init__(self, stage_id: str, params: schema.Pose, context: StageContext):
        super().__init__(stage_id, params, context)
        folder = find_model_dir(params.model, context.model_paths or default_search_path(), context.graph_dir)
        files = network_files(folder, params.network)
        engines: dict[str, Engine] = {}
        self.engines = []
        try:
            for role, path in files.items():
                engines[role] = load_engine(network_folder(path, params.network), engine=params.engine,
                                            device=params.device, precision=params.precision,
                                            threads=context.threads or params.threads, fallback=params.fallback,
                                            cache_dir=context.engine_cache)
                self.engines.append(engines[role])
            if params.network == "openpose":
                self.estimator = OpenPoseEstimator(engines["network"], params)
            elif params.network == "movenet":
                self.estimator = MoveNetEstimator(engines["network"], params)
            else:
                from streampose.stages.blazepose import BlazePoseEstimator
                self.estimator = BlazePoseEstimator(engines["detector"], engines["landmarks"], params, context,
                                                    self.log)
        except Exception:
            self.close()
            raise
        self.memory = self.per_stream(StreamMemory)
        self.log.info("%s network (%s keypoints): %s", params.network, KIND_LAYOUTS[params.network],
                      "; ".join(e.describe() for e in self.engines))

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:   # in order: a single-person network's crop follows from the frame before
            keypoints, scores, kpts3d = self.estimator.estimate(frame, self.memory.get(frame))
            keep = scores >= self.params.min_score
            unboxed = Persons.from_boxes(np.zeros((int(keep.sum()), 4), np.float32), scores[keep])
            unboxed.keypoints = keypoints[keep]
            persons = boxes_from_keypoints(unboxed, frame.width, frame.height)
            persons.keypoints, persons.pose_scores = unboxed.keypoints, unboxed.keypoints[..., 2].mean(1)
            if kpts3d is not None:
                persons.kpts3d = kpts3d[keep]
            # Fewer than 3 confident joints get no box (it stays all zeros): too little to be a person.
            sides = persons.boxes[:, 2:] - persons.boxes[:, :2]
            frame.persons = persons.select((sides > 1).all(axis=1))

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
