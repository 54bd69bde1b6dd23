"""The JDE stage: detects and tracks persons with one FairMOT / JDE network.

Each frame is letterboxed and run through the network alone (these exports take a batch of
one and return all detections of the image as one list). The network gives detections
(K, 6) (class, score, x0, y0, x1, y1 in frame pixels: it maps its boxes back through
im_shape and scale_factor itself) and embeddings (K, D), its first and second outputs, as
PaddleDetection's deploy code reads them. Persons (the label named person or pedestrian) go
to the stream's JdeTracker; the frame's persons become those of confirmed tracks that pass
the tracker section's size filter, ordered by id, with `track_ids` set, and ended tracks are
appended to `ended_tracks` (the size filter only hides boxes: a track whose boxes were never
published still has an id, and its end is announced too).

Streams reset as after the tracker stage: a stream's tracks are dropped without announcement
at a timeline break (runtime/state.py); ids keep counting across resets.
"""

from __future__ import annotations

import numpy as np

from streampose.engines import Engine
from streampose.frame import Frame, Persons
from streampose.graph import schema
from streampose.models.folder import ModelFolder
from streampose.runtime.stage import Stage, StageContext
from streampose.stages.detector import person_class
from streampose.tracking.jde import JdeConfigError, JdeSettings, JdeTracker, publishable
from streampose.tracking.streams import StreamTrackers
from streampose.tracking.track import Observations
from streampose.vision.detections import clip_boxes
from streampose.vision.preprocess import LETTERBOX_OPS, ImagePreprocessor, PreprocessError, check_ops, image_input

DETECTION_COLUMNS = 6  # class, score, x0, y0, x1, y1


class JdeNetwork:
    """A FairMOT / JDE export with its pre-processing: BGR frame -> person detections with embeddings."""

    def __init__(self, folder: ModelFolder, engine: Engine):
        config = folder.config
        folder.require_task("jde", "a joint detection-embedding (FairMOT or JDE) export", JdeConfigError)
        check_ops(config.preprocess, LETTERBOX_OPS, config.source)
        self.engine = engine
        self.network_input = image_input(folder, engine, JdeConfigError)
        self.preprocessor = ImagePreprocessor(config.preprocess, config.channel_order, self.network_input.size,
                                              config.source)
        outputs = engine.outputs
        if (len(outputs) < 2 or len(outputs[0].shape) != 2 or outputs[0].shape[1] != DETECTION_COLUMNS
                or len(outputs[1].shape) != 2):
            raise JdeConfigError(f"model {folder.name}: expected outputs detections (N, {DETECTION_COLUMNS}) and "
                                 f"embeddings (N, D), got {[(t.name, list(t.shape)) for t in outputs]}")
        self.detections_output, self.embeddings_output = outputs[0].name, outputs[1].name
        self.person_class = person_class(folder, config.label_list, JdeConfigError)

    def detect(self, image: np.ndarray) -> Observations:
        """The persons of one (H, W, 3) uint8 BGR image, boxes in its pixels, with embeddings."""
        results = self.engine.run(self.preprocessor.prepare([image]).feed(self.network_input))
        detections, embeddings = results[self.detections_output], results[self.embeddings_output]
        if len(detections) != len(embeddings):
            raise ValueError(f"the network gave {len(detections)} detections but {len(embeddings)} embeddings")
        persons = detections[:, 0] == self.person_class
        boxes = clip_boxes(detections[persons, 2:6].astype(np.float32), image.shape[1], image.shape[0])
        return Observations(boxes, detections[persons, 1].astype(np.float32), embeddings=embeddings[persons])


class JdeStage(Stage):
    def __init__(self, stage_id: str, params: schema.JdeDetector, context: StageContext):
        super().__init__(stage_id, params, context)
        folder, engine = self.load_model(max_batch=1)
        try:
            self.network = JdeNetwork(folder, engine)
            self.settings = JdeSettings.from_section(folder.config.tracker, folder.config.source,
                                                     min_hits=params.min_hits, max_age_s=params.max_age_s,
                                                     conf_threshold=params.conf_threshold)
        except (JdeConfigError, PreprocessError):
            engine.close()
            raise
        self.log.info("%s, person class %d, %s", engine.describe(), self.network.person_class, self.settings)
        self.trackers = StreamTrackers(self, lambda first_id: JdeTracker(self.settings, first_id), self.log)

    def process(self, frames: list[Frame]) -> None:
        # Every network run before any tracker update: when one raises, the runner retries the
        # batch frame by frame, and trackers already fed the earlier frames would see them twice.
        found = [self.network.detect(frame.image) for frame in frames]
        for frame, detections in zip(frames, found):
            update = self.trackers.for_frame(frame).update(detections, frame.media_time)
            shown = publishable(detections.boxes[update.rows], self.settings)
            rows = update.rows[shown]
            persons = Persons.from_boxes(detections.boxes[rows], detections.scores[rows])
            persons.track_ids = update.track_ids[shown]
            frame.persons = persons
            frame.ended_tracks.extend(update.ended)

    def close(self) -> None:
        self.network.engine.close()
