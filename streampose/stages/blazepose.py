"""BlazePose for the pose stage: one person per stream, 2D keypoints and 3D joints in metres.

Per frame: the region from the stream's previous landmarks (`follow`), else from the detector;
the landmark network on it; if the person is no longer there (presence below MIN_PRESENCE) after
a followed region, the detector runs on the frame and the landmarks once more. The 33 landmarks
become COCO-17 (streampose.posenets.layouts). The world landmarks (metres, hip-centred, camera
axes) are placed in front of the camera where they project onto the 2D keypoints, as the lift3d
stage places its skeletons (streampose.geometry.lifting.place_by_height), but with the person's
size from the network rather than an assumed height.
"""

from __future__ import annotations

import numpy as np

from streampose.engines import Engine
from streampose.frame import NUM_KEYPOINTS, Frame
from streampose.geometry.lifting import place_by_height
from streampose.graph import schema
from streampose.posenets import blazepose, layouts
from streampose.posenets.networks import PoseNetworkError
from streampose.runtime.stage import StageContext
from streampose.stages.lift3d import MIN_DEPTH_M, Cameras

# 2D joints whose visibility is lower do not pull the 3D placement (as lift3d's min_confidence).
PLACEMENT_CONFIDENCE = 0.3


class BlazePoseEstimator:
    def __init__(self, detector: Engine, landmarks: Engine, params: schema.Pose, context: StageContext, log):
        self.detector, self.landmarks = detector, landmarks
        self.detector_input = detector.inputs[0].name
        self.detector_boxes, self.detector_scores = (t.name for t in sorted(detector.outputs,
                                                                             key=lambda t: -t.shape[-1]))
        names = {t.name for t in landmarks.outputs}
        wanted = {"Identity", "Identity_1", "Identity_4"}
        if not wanted <= names:
            raise PoseNetworkError(f"{landmarks.folder.name}: expected BlazePose landmark outputs {sorted(wanted)}, "
                             f"got {sorted(names)}")
        self.landmark_input = landmarks.inputs[0].name
        self.anchors = blazepose.anchors()
        self.follow = params.follow
        self.world_3d = params.world_3d
        self.cameras = Cameras(params.calib, context.graph_dir, params.assumed_hfov_deg, context.streams,
                               log) if params.world_3d else None

    def estimate(self, frame: Frame, memory) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """`memory`: the stream's stages.pose.StreamMemory, whose crop is the region found on the
        stream's previous frame."""
        found = None
        region, memory.crop = (memory.crop if self.follow else None), None
        if region is not None:
            found = self._landmarks(frame.image, region)
        if found is None:
            region = self._detect(frame.image)
            found = self._landmarks(frame.image, region) if region is not None else None
        if found is None:
            return np.zeros((0, NUM_KEYPOINTS, 3), np.float32), np.zeros(0, np.float32), \
                np.zeros((0, NUM_KEYPOINTS, 4), np.float32) if self.world_3d else None
        memory.crop = found.next_region
        keypoints = layouts.to_coco(found.image[:blazepose.LANDMARKS], layouts.BLAZEPOSE_33)
        kpts3d = self._place(frame, keypoints, found) if self.world_3d else None
        return keypoints[None], np.array([found.presence], np.float32), kpts3d

    def _detect(self, image: np.ndarray) -> blazepose.Region | None:
        tensor, scale, offset = blazepose.letterbox(image)
        out = self.detector.run({self.detector_input: tensor[None]})
        best = blazepose.best_detection(out[self.detector_boxes][0], out[self.detector_scores][0], self.anchors,
                                        scale, offset)
        return None if best is None else best[0]

    def _landmarks(self, image: np.ndarray, region: blazepose.Region) -> blazepose.Landmarks | None:
        out = self.landmarks.run({self.landmark_input: region.crop(image)[None]})
        found = blazepose.decode_landmarks(out["Identity"][0], out["Identity_4"][0], out["Identity_1"][0, 0], region)
        return found if found.presence >= blazepose.MIN_PRESENCE else None

    def _place(self, frame: Frame, keypoints: np.ndarray, found: blazepose.Landmarks) -> np.ndarray:
        """(1, 17, 4) joints in metres in the camera frame and their 2D confidence."""
        camera = self.cameras.get(frame.stream, frame.width, frame.height)
        skeleton = layouts.to_coco(found.world[:blazepose.LANDMARKS], layouts.BLAZEPOSE_33).astype(np.float64)
        rays = camera.rays(keypoints[None, :, :2])
        weights = np.where(keypoints[:, 2] >= PLACEMENT_CONFIDENCE, keypoints[:, 2], 0.0)[None]
        root = place_by_height(rays, weights, skeleton[None])[0]
        kpts3d = np.zeros((1, NUM_KEYPOINTS, 4), np.float32)
        if root[2] > MIN_DEPTH_M:
            kpts3d[0, :, :3] = skeleton + root
            kpts3d[0, :, 3] = keypoints[:, 2]
        return kpts3d
