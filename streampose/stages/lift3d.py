"""The 3D lift stage: each person's 2D keypoints -> 17 joints in metres in the camera frame.

Per frame, every person with enough confident joints gets a window of its track's last T
normalised 2D poses (streampose.geometry.lifting); the windows of all persons of all frames in
the batch run through the lifter network in one engine call; the root-relative skeletons it
returns are scaled to the assumed height and placed in front of the camera (or on the floor).
Windows are per (stream, track) in the stage's state store (runtime/state.py: freed with the
track, at timeline breaks and beyond MAX_TRACK_WINDOWS per stream). Untracked persons are lifted
from their current pose alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streampose.engines import Engine
from streampose.frame import COCO_KEYPOINTS, NUM_KEYPOINTS, UNTRACKED, Frame
from streampose.geometry.camera import Camera, CalibError, assumed_camera, load_camera
from streampose.geometry.lifting import normalise_pose2d, place_by_height, place_on_ground, to_camera
from streampose.graph import schema
from streampose.models.folder import ModelFolder
from streampose.runtime.stage import Stage, StageContext

# Most windows in one engine run. Runs are padded to a power of two, so an engine that compiles
# per batch size compiles at most seven.
MAX_PERSONS_PER_RUN = 64
# Most track windows kept per stream (each T x 17 x 3 float32: 1.8 kB at T = 9).
MAX_TRACK_WINDOWS = 1024
# A placed root nearer than this to the lens (metres) is a failed solution, not a person.
MIN_DEPTH_M = 0.1


class LifterConfigError(ValueError):
    """The model cannot serve as a lifter."""


@dataclass
class _Window:
    """A track's last T poses (T, 17, 3), oldest first; None before its first."""

    poses: np.ndarray | None = None

    def extended(self, pose: np.ndarray, length: int) -> np.ndarray:
        """The window with `pose` appended (a new track's: `pose` repeated), kept."""
        self.poses = (np.repeat(pose[None], length, axis=0) if self.poses is None
                      else np.concatenate([self.poses[1:], pose[None]]))
        return self.poses


class Cameras:
    """The camera of each stream: its calibration file (scaled to the frame size) or the
    assumed field of view. Files named in `calib` are read when the stage is built."""

    def __init__(self, calib: str | dict[str, str] | None, graph_dir: Path, hfov_deg: float,
                 streams: list[str], log):
        self.hfov_deg = hfov_deg
        self.log = log
        self._calibrated: dict[str, Camera] = {}
        self._cameras: dict[tuple[str, int, int], Camera] = {}
        self._folder: Path | None = None
        if isinstance(calib, dict):
            unknown = sorted(set(calib) - set(streams)) if streams else []
            if unknown:
                raise CalibError(f"calib names stream(s) {', '.join(unknown)} that do not reach this stage; "
                                 f"streams: {', '.join(streams)}")
            for stream, file in calib.items():
                self._calibrated[stream] = load_camera(graph_dir / file)
        elif isinstance(calib, str):
            self._folder = graph_dir / calib
            if not self._folder.is_dir():
                raise CalibError(f"calib folder {self._folder} does not exist")
            for stream in streams:
                self._load_from_folder(stream)

    def _load_from_folder(self, stream: str) -> Camera | None:
        if stream not in self._calibrated and self._folder is not None:
            path = self._folder / f"{stream}.yml"
            if path.is_file():
                self._calibrated[stream] = load_camera(path)
        return self._calibrated.get(stream)

    def get(self, stream: str, width: int, height: int) -> Camera:
        key = (stream, width, height)
        camera = self._cameras.get(key)
        if camera is None:
            calibrated = self._load_from_folder(stream)
            try:
                camera = calibrated.resized(width, height) if calibrated else None
            except CalibError as exc:
                self.log.error("stream %s: %s; using an assumed field of view", stream, exc)
            if camera is None:
                camera = assumed_camera(width, height, self.hfov_deg)
                self.log.info("stream %s: no camera calibration, %s (%dx%d)", stream, camera.source, width, height)
            else:
                self.log.info("stream %s: camera from %s at %dx%d%s", stream, camera.source, width, height,
                              ", floor known" if camera.ground_plane else "")
            self._cameras[key] = camera
        return camera


class Lifter:
    """The lifter network with the facts its model folder states about it."""

    def __init__(self, folder: ModelFolder, engine: Engine):
        config = folder.config
        folder.require_task("lifter", "a 2D->3D lifter", LifterConfigError)
        if config.label_list != COCO_KEYPOINTS:
            raise LifterConfigError(f"{config.source}: label_list must be the COCO-17 keypoints in COCO order "
                                    f"({', '.join(COCO_KEYPOINTS)})")
        window, ratio = config.raw.get("window"), config.raw.get("stature_ratio")
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise LifterConfigError(f"{config.source}: key 'window': expected the poses per input, a positive "
                                    f"integer, got {window!r}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.3 < ratio < 1:
            raise LifterConfigError(f"{config.source}: key 'stature_ratio': expected skeleton length / standing "
                                    f"height, a number in (0.3, 1), got {ratio!r}")
        expected_in, expected_out = (window, NUM_KEYPOINTS, 3), (NUM_KEYPOINTS, 3)
        if (len(engine.inputs) != 1 or len(engine.outputs) != 1
                or tuple(engine.inputs[0].shape[1:]) != expected_in
                or tuple(engine.outputs[0].shape[1:]) != expected_out):
            raise LifterConfigError(f"model {folder.name}: expected one input (N, {window}, 17, 3) and one output "
                                    f"(N, 17, 3), got inputs {[list(t.shape) for t in engine.inputs]} and "
                                    f"outputs {[list(t.shape) for t in engine.outputs]}")
        self.engine = engine
        self.window = window
        self.stature_ratio = float(ratio)
        self.input, self.output = engine.inputs[0].name, engine.outputs[0].name

    def lift(self, windows: np.ndarray) -> np.ndarray:
        """Root-relative 3D joints (N, 17, 3) of windows (N, T, 17, 3): skeleton lengths, in the
        axes of each window's last virtual camera (streampose.geometry.lifting)."""
        out = np.empty((len(windows), NUM_KEYPOINTS, 3), np.float32)
        largest = self.engine.max_batch
        for start in range(0, len(windows), largest):
            chunk = windows[start:start + largest]
            padded = np.zeros((min(1 << (len(chunk) - 1).bit_length(), largest), *chunk.shape[1:]), np.float32)
            padded[:len(chunk)] = chunk
            out[start:start + len(chunk)] = self.engine.run({self.input: padded})[self.output][:len(chunk)]
        return out


@dataclass
class _ToLift:
    """The persons of one frame to lift.

    persons:   (n,) their indices in frame.persons.
    windows:   (n, T, 17, 3) network inputs.
    rotations: (n, 3, 3) camera -> virtual camera of each person's current pose.
    rays:      (n, 17, 2) normalised image coordinates of the current pose.
    weights:   (n, 17) placement weight of each joint (its confidence, 0 below min_confidence).
    """

    persons: np.ndarray
    windows: np.ndarray
    rotations: np.ndarray
    camera: Camera
    rays: np.ndarray
    weights: np.ndarray


class Lift3DStage(Stage):
    def __init__(self, stage_id: str, params: schema.Lift3D, context: StageContext):
        super().__init__(stage_id, params, context)
        folder, engine = self.load_model(max_batch=MAX_PERSONS_PER_RUN,
                                         batch_sizes=[1 << i for i in range(MAX_PERSONS_PER_RUN.bit_length())])
        try:
            self.lifter = Lifter(folder, engine)
            self.cameras = Cameras(params.calib, context.graph_dir, params.assumed_hfov_deg, context.streams,
                                   self.log)
        except Exception:
            engine.close()
            raise
        self.windows = self.per_track(_Window, MAX_TRACK_WINDOWS)
        self.log.info("%s, window of %d poses, persons %.2f m tall", engine.describe(), self.lifter.window,
                      params.person_height_m)

    def process(self, frames: list[Frame]) -> None:
        gathered = [self._gather(frame) for frame in frames]
        windows = [found.windows for found in gathered if found]
        relative = self.lifter.lift(np.concatenate(windows)) if windows else None
        start = 0
        for frame, found in zip(frames, gathered):
            kpts3d = np.zeros((len(frame.persons), NUM_KEYPOINTS, 4), np.float32)
            if found:
                end = start + len(found.persons)
                self._place(kpts3d, found, relative[start:end], frame.persons.keypoints[found.persons, :, 2])
                start = end
            frame.persons.kpts3d = kpts3d

    def _window(self, frame: Frame, track_id: int, pose: np.ndarray) -> np.ndarray:
        if track_id == UNTRACKED:
            return np.broadcast_to(pose, (self.lifter.window, *pose.shape))
        return self.windows.get(frame, track_id).extended(pose, self.lifter.window)

    def _gather(self, frame: Frame) -> _ToLift | None:
        persons = frame.persons
        if persons.keypoints is None or not len(persons):
            return None
        confidence = persons.keypoints[..., 2]
        confident = confidence >= self.params.min_confidence
        lifted = np.flatnonzero(confident.sum(1) >= self.params.min_joints)
        if not len(lifted):
            return None
        camera = self.cameras.get(frame.stream, frame.width, frame.height)
        rays = camera.rays(persons.keypoints[lifted, :, :2])
        poses, rotations = normalise_pose2d(rays, confidence[lifted])
        windows = np.stack([self._window(frame, int(persons.track_ids[i]), pose) for i, pose in zip(lifted, poses)])
        weights = np.where(confident[lifted], confidence[lifted], 0.0)
        return _ToLift(lifted, windows, rotations, camera, rays, weights)

    def _place(self, kpts3d: np.ndarray, found: _ToLift, relative: np.ndarray, confidence: np.ndarray) -> None:
        height = self.params.person_height_m
        skeleton = to_camera(found.rotations, relative.astype(np.float64) * (height * self.lifter.stature_ratio))
        roots = place_by_height(found.rays, found.weights, skeleton)
        ground = found.camera.ground_plane
        if self.params.placement == "auto" and ground is not None:
            on_floor, scale, plausible = place_on_ground(found.rays, found.weights, skeleton, ground, height)
            roots[plausible] = on_floor[plausible]
            skeleton[plausible] *= scale[plausible, None, None]
        placed = roots[:, 2] > MIN_DEPTH_M
        rows = found.persons[placed]
        kpts3d[rows, :, :3] = skeleton[placed] + roots[placed, None, :]
        kpts3d[rows, :, 3] = confidence[placed]

    def close(self) -> None:
        self.lifter.engine.close()
