"""PP-YOLOE / PP-YOLOE+ model folders (`arch: YOLO`): a tiny randomly initialised network with
PP-YOLOE's inputs, head and post-processing, exported by Paddle with and without NMS in the
network (scripts/make_tiny_ppyoloe.py), runs as a detector on every engine that reads it: the
Paddle program on OpenVINO and Paddle Inference, its ONNX conversion (`streampose models convert`)
on ONNX Runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import IMAGES, REPO
from streampose.frame import Frame
from streampose.graph import schema
from streampose.models.convert import convert
from streampose.models.folder import load_model_folder
from streampose.runtime.stage import StageContext
from streampose.stages.detector import DetectorStage
from streampose.tracking.association import iou_matrix
from streampose.vision import picodet

IMAGE = IMAGES / "four_people_walking_gy_demo_7.jpg"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ppyoloe")
    made = {}
    for name, extra in (("boxes", []), ("nms", ["--nms"])):
        made[name] = root / name
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_ppyoloe.py"), str(made[name]), *extra],
                       check=True, capture_output=True, timeout=300)
        made[f"{name}_onnx"] = convert(load_model_folder(made[name]), "onnx", root / "onnx").path
    return made


def detect(folder: Path, engine: str) -> tuple[str, np.ndarray, np.ndarray]:
    spec = schema.Detector(id="d", type="detector", model=str(folder), engine=engine)
    stage = DetectorStage("d", spec, StageContext(graph_dir=Path("."), output_dir=Path(".")))
    image = cv2.imread(str(IMAGE))
    frame = Frame(stream="s", index=0, image=image, capture_time=0.0, media_time=0.0)
    stage.run([frame])
    stage.close()
    return stage.detector.form, frame.persons.boxes, frame.persons.scores


@pytest.mark.parametrize("form", ["boxes", "nms"])
def test_ppyoloe_folder_runs_as_a_detector_and_engines_agree(folders, form):
    image = cv2.imread(str(IMAGE))
    found = {engine: detect(folders[form], engine) for engine in ("openvino", "paddle")}
    found["onnxruntime"] = detect(folders[f"{form}_onnx"], "onnxruntime")
    expected_form = picodet.DECODED if form == "boxes" else picodet.NMS_IN_GRAPH
    for engine, (kind, boxes, scores) in found.items():
        assert kind == expected_form, engine
        assert len(boxes) > 10, engine
        # Boxes are frame pixels (the network divided by scale_factor; the detector neither
        # divides twice nor forgets to), inside the image.
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert boxes[:, 2].max() > 0.8 * image.shape[1] and boxes[:, 3].max() > 0.8 * image.shape[0]
        assert (boxes[:, [0, 2]] <= image.shape[1]).all() and (boxes[:, [1, 3]] <= image.shape[0]).all()
    _, ov_boxes, ov_scores = found["openvino"]
    for engine in ("paddle", "onnxruntime"):
        _, boxes, scores = found[engine]
        assert len(boxes) == len(ov_boxes), engine
        assert np.abs(boxes - ov_boxes).max() < 0.05 and np.abs(scores - ov_scores).max() < 1e-4, engine


def test_nms_in_the_network_and_nms_in_streampose_keep_the_same_best_boxes(folders):
    _, graph_boxes, graph_scores = detect(folders["nms"], "openvino")
    _, boxes, scores = detect(folders["boxes"], "openvino")
    # Paddle's NMS measures boxes with +1 pixel (normalized: false), streampose's without, so a few
    # borderline overlaps go differently; the strongest boxes are the same.
    best = 10
    assert np.allclose(graph_scores[:best], scores[:best], atol=1e-5)
    assert (iou_matrix(graph_boxes[:best], boxes[:best]).diagonal() > 0.99).all()
    kept_by_both = iou_matrix(graph_boxes, boxes).max(axis=1) > 0.99
    assert kept_by_both.mean() > 0.9
