"""Finding and describing the network files of detector-free pose networks.

These networks are not PaddleDetection exports and come without infer_cfg.yml; what would be in
it (pre-processing, output layout, keypoint layout) is fixed per network kind and lives in the
modules of this package. So the `pose` stage names the kind (`network: openpose`), and its model
folder only has to hold the network file(s), under any name:

    openpose   one OpenVINO IR (*.xml + *.bin of the same stem); Intel's human-pose-estimation-0001
    movenet    one *.tflite: MoveNet SinglePose Lightning or Thunder
    blazepose  pose_detection.tflite + pose_landmark_{lite,full,heavy}.tflite (MediaPipe)

Each network file becomes a ModelFolder (what engines load) whose config names the kind as its
arch and the keypoint layout as its labels, with no pre-processing ops.
"""

from __future__ import annotations

from pathlib import Path

from streampose.models.folder import ModelFolder, ModelFolderError
from streampose.models.infer_cfg import InferConfig
from streampose.posenets.layouts import LAYOUTS

NETWORK_KINDS = ("openpose", "movenet", "blazepose")


class PoseNetworkError(ValueError):
    """A network's inputs or outputs are not those of the kind the pose stage names."""
# Kind -> the released network's folder name in the shared models (../shared/models/README.md).
DEFAULT_MODELS = {"openpose": "human_pose_estimation_0001_int8_ov",
                  "movenet": "movenet_singlepose_lightning_int8_tflite",
                  "blazepose": "blazepose_lite_tflite"}
# Kind -> its keypoint layout (streampose.posenets.layouts).
KIND_LAYOUTS = {"openpose": "openpose18", "movenet": "coco17", "blazepose": "blazepose33"}


def network_files(folder: Path, kind: str) -> dict[str, Path]:
    """The network files of a `kind` model folder, by role ("network"; blazepose: "detector" and
    "landmarks"). Raises ModelFolderError naming what is missing."""
    def one(pattern: str, what: str) -> Path:
        found = sorted(folder.glob(pattern))
        if len(found) != 1:
            have = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
            raise ModelFolderError(f"{folder}: a {kind} model folder holds exactly one {what} ({pattern}); "
                                   f"found {len(found)} (it holds {have})")
        return found[0]

    if kind == "openpose":
        xml = one("*.xml", "OpenVINO IR network")
        if not xml.with_suffix(".bin").is_file():
            raise ModelFolderError(f"{folder}: {xml.name} needs its weights file {xml.with_suffix('.bin').name}")
        return {"network": xml}
    if kind == "movenet":
        return {"network": one("*.tflite", "TFLite network")}
    if kind == "blazepose":
        return {"detector": one("pose_detection.tflite", "BlazePose detector"),
                "landmarks": one("pose_landmark_*.tflite", "BlazePose landmark network")}
    raise ValueError(f"unknown pose network kind {kind!r}; known: {', '.join(NETWORK_KINDS)}")


def network_folder(path: Path, kind: str) -> ModelFolder:
    """A ModelFolder for one network file of a `kind` network, for `load_engine`."""
    fmt = "tflite" if path.suffix == ".tflite" else "openvino"
    weights = path.with_suffix(".bin") if fmt == "openvino" else None
    config = InferConfig(source=f"{path} (a {kind} network: no infer_cfg.yml)", arch=kind, preprocess=(),
                         label_list=LAYOUTS[KIND_LAYOUTS[kind]])
    return ModelFolder(path=path.parent, name=f"{path.parent.name}/{path.name}", format=fmt, network=path,
                       weights=weights, config=config)
