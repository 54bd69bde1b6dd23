"""The detector stage: finds the persons of each frame (PP-PicoDet in any export form, PP-YOLOE /
PP-YOLOE+ with or without NMS in the network, or YOLOX).

All frames of a batch (any streams) are pre-processed, run through the network in one
engine call and decoded together. With `every_n_frames` > 1 a stream's frames between
detections carry its last boxes over, marked `detected = False`; the keypoints stage refits
them to the previous frame's keypoints (streampose.stages.keypoints).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streampose.engines import Engine
from streampose.frame import Frame, Persons
from streampose.graph import schema
from streampose.models.folder import ModelFolder
from streampose.runtime.stage import Stage, StageContext
from streampose.vision import picodet, yolox
from streampose.vision.detections import Detections, NmsSettings, select_batch, select_persons
from streampose.vision.preprocess import IMAGE_OPS, ImageBatch, ImagePreprocessor, check_ops, image_input

PERSON_LABELS = ("person", "pedestrian")
# Used when a model's infer_cfg.yml has no NMS block.
DEFAULT_NMS = NmsSettings(score_threshold=0.3, iou_threshold=0.5, candidates=1000, keep=100)


class DetectorConfigError(ValueError):
    """The model cannot serve as a person detector."""


@dataclass
class _Carry:
    """What a stream's frames between detections carry over (every_n_frames)."""

    detected_index: int = -1                                 # frame index of the last detection; -1: none
    persons: Persons = field(default_factory=Persons.empty)  # its boxes


class PersonDetector:
    """A detector network with its pre- and post-processing: BGR frames -> persons."""

    def __init__(self, folder: ModelFolder, engine: Engine, params: schema.Detector):
        config = folder.config
        folder.require_task("detector", "a detector", DetectorConfigError)
        check_ops(config.preprocess, IMAGE_OPS, config.source)
        self.folder = folder
        self.config = config
        self.engine = engine
        self.network_input = image_input(folder, engine, DetectorConfigError)
        self.preprocessor = ImagePreprocessor(config.preprocess, config.channel_order, self.network_input.size,
                                              config.source)
        shapes = [t.shape for t in engine.outputs]
        if config.arch == "YOLOX":
            self.form = yolox.OUTPUT_FORM
        else:
            self.form = picodet.output_form(shapes, len(config.fpn_stride or ()))
            if self.form == picodet.RAW_HEADS and not config.fpn_stride:
                raise DetectorConfigError(f"{config.source}: raw PicoDet heads need fpn_stride")
        class_count = _class_count(self.form, shapes)
        self.person_class = person_class(folder, config.labels_for(class_count) if class_count else config.label_list,
                                         DetectorConfigError)
        self.settings = NmsSettings.from_config(config.nms, DEFAULT_NMS, params.score_threshold,
                                                params.nms_threshold, params.max_persons)

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        """Persons in each (H, W, 3) uint8 BGR image, at most `engine.max_batch` images."""
        batch = self.preprocessor.prepare(images)
        results = self.engine.run(batch.feed(self.network_input))
        outputs = [results[t.name] for t in self.engine.outputs]
        input_hw = batch.tensor.shape[2:]
        if self.form == yolox.OUTPUT_FORM:
            boxes, scores = yolox.decode(outputs[0], input_hw, self.person_class,
                                         self.config.fpn_stride or yolox.STRIDES)
        elif self.form == picodet.RAW_HEADS:
            return self._select_raw_heads(outputs, batch)
        elif self.form == picodet.DECODED:
            boxes, class_scores = picodet.split_decoded(outputs)
            scores = class_scores[..., self.person_class]
            if "scale_factor" in self.network_input.batch_info:
                # The network divided its boxes by scale_factor (PPYOLOEHead, PicoHead post_process):
                # back to input pixels, where select_batch clips and rescales them.
                boxes = boxes * np.tile(batch.scale_factor[:, None, ::-1], (1, 1, 2))
        else:
            return picodet.detections_from_graph_nms(outputs, self.person_class, [i.shape[:2] for i in images],
                                                     self.settings.score_threshold, self.settings.keep)
        return select_batch(boxes, scores, self.settings, batch)

    def _select_raw_heads(self, outputs: list[np.ndarray], batch: ImageBatch) -> list[Detections]:
        """Raw PicoDet heads -> persons, decoding only the boxes of cells scoring above the
        threshold: NMS keeps nothing else (it compares float32 scores with the float32 threshold,
        as here)."""
        strides, input_hw = self.config.fpn_stride, batch.tensor.shape[2:]
        scores = picodet.raw_head_scores(outputs, strides, input_hw)[..., self.person_class]  # (B, N)
        threshold = np.float32(self.settings.score_threshold)
        found = []
        for image, image_scores in enumerate(scores):
            cells = np.flatnonzero(image_scores > threshold)
            boxes = picodet.decode_raw_cells(outputs, strides, input_hw, image, cells)
            found.append(select_persons(boxes, image_scores[cells], self.settings, batch.scale_factor[image],
                                        batch.im_shape[image]))
        return found


def _class_count(form: str, shapes: list[tuple[int, ...]]) -> int | None:
    """Classes the network scores, from its output shapes; None when they do not tell."""
    if form == picodet.RAW_HEADS:
        count = shapes[0][-1]
    elif form == picodet.DECODED:
        count = shapes[1][1] if shapes[0][-1] == 4 else shapes[0][1]
    elif form == yolox.OUTPUT_FORM:
        count = shapes[0][-1] - 5
    else:
        return None
    return count if count > 0 else None


def person_class(folder: ModelFolder, labels: list[str], error: type[ValueError]) -> int:
    """Index of the person class among `labels`, the network's classes (from the folder's
    label_list); raises `error` when none of them is a person."""
    lowered = [label.lower() for label in labels]
    for name in PERSON_LABELS:
        if name in lowered:
            return lowered.index(name)
    raise error(f"model {folder.name}: the network's classes ({', '.join(lowered[:5])}"
                f"{', ...' if len(lowered) > 5 else ''}, from label_list in {folder.config.source}) "
                f"include no {' or '.join(PERSON_LABELS)}")


class DetectorStage(Stage):
    def __init__(self, stage_id: str, params: schema.Detector, context: StageContext):
        super().__init__(stage_id, params, context)
        folder, engine = self.load_model(max_batch=params.batch.max_size)
        self.detector = PersonDetector(folder, engine, params)
        self.log.info("%s, %s outputs, person class %d", engine.describe(), self.detector.form,
                      self.detector.person_class)
        self.carried = self.per_stream(_Carry)

    def process(self, frames: list[Frame]) -> None:
        to_detect = self._plan(frames)
        detected: dict[int, Detections] = {}
        step = self.detector.engine.max_batch
        for start in range(0, len(to_detect), step):
            chunk = to_detect[start:start + step]
            for i, found in zip(chunk, self.detector.detect([frames[i].image for i in chunk])):
                detected[i] = found
        for i, frame in enumerate(frames):
            carry = self.carried.get(frame)
            if i in detected:
                frame.persons = Persons.from_boxes(detected[i].boxes, detected[i].scores)
                carry.persons = frame.persons
            else:
                frame.persons = Persons.from_boxes(carry.persons.boxes.copy(), carry.persons.scores.copy())
                frame.detected = False

    def _plan(self, frames: list[Frame]) -> list[int]:
        """Indices of the frames to run the network on; marks them in their stream's carry."""
        every = self.params.every_n_frames
        chosen = []
        for i, frame in enumerate(frames):
            carry = self.carried.get(frame)
            if carry.detected_index < 0 or not 0 < frame.index - carry.detected_index < every:
                carry.detected_index, carry.persons = frame.index, Persons.empty()
                chosen.append(i)
        return chosen

    def close(self) -> None:
        self.detector.engine.close()
