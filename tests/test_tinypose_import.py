"""The Paddle PP-TinyPose (trainers/keypoint/tinypose_net.py) with the trained weights imported from
the shared OpenVINO IRs gives the IRs' heatmaps on real person crops: crops of the shared images
cut around the real detector's boxes exactly as the keypoint stage cuts them, both input sizes."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import paddle
import pytest

from conftest import IMAGES, MODELS, REPO
from streampose.frame import Frame
from streampose.graph import schema
from streampose.models.folder import find_model
from streampose.runtime.stage import StageContext
from streampose.stages.detector import DetectorStage
from streampose.vision import topdown
from streampose.vision.preprocess import normalize_crops

# trainers/ is a folder of the repository, not part of the installed package.
sys.path.insert(0, str(REPO))
from trainers.keypoint.import_ir import IrImportError, load_ir_weights
from trainers.keypoint.tinypose_net import build_tinypose

IMAGE_NAMES = ("hrnet_demo.jpg", "four_people_walking_gy_demo_7.jpg")
MODEL_SIZES = {"tinypose_128x96_ov": (128, 96), "tinypose_256x192_ov": (256, 192)}
# Both sides compute in float32 from the same float16 weights: only summation order differs.
MAX_DIFF_OF_RANGE = 1e-4


@pytest.fixture(scope="module")
def person_boxes() -> list[tuple[np.ndarray, np.ndarray]]:
    """(BGR image, boxes (P, 4)) of each shared image, from the real detector."""
    context = StageContext(graph_dir=Path("."), output_dir=Path("."), model_paths=[MODELS])
    detector = DetectorStage("detector", schema.Detector(id="detector", type="detector",
                                                         model="picodet_s_192_pedestrian"), context)
    frames = [Frame(stream="s", index=i, image=cv2.imread(str(IMAGES / name)), capture_time=0.0, media_time=0.0)
              for i, name in enumerate(IMAGE_NAMES)]
    detector.run(frames)
    detector.close()
    found = [(f.image, f.persons.boxes[f.persons.scores >= 0.3]) for f in frames]
    assert sum(len(boxes) for _, boxes in found) >= 4
    return found


def crops_for(model: str, person_boxes) -> np.ndarray:
    """(N, 3, H, W) float32 network input, the keypoint stage's crop and normalisation."""
    folder = find_model(model, [MODELS])
    height, width = MODEL_SIZES[model]
    images = [image for image, _ in person_boxes]
    boxes = np.concatenate([b for _, b in person_boxes])
    index = np.repeat(np.arange(len(images)), [len(b) for _, b in person_boxes])
    to_crop, _, _ = topdown.crop_affines(boxes, 0.3, (width, height))
    crops = topdown.warp_crops(images, index, to_crop, (width, height))
    return normalize_crops(crops, folder.config.preprocess[1:], folder.config.channel_order)


def ir_heatmaps(xml: Path, crops: np.ndarray) -> np.ndarray:
    core = ov.Core()
    model = core.read_model(str(xml))
    model.reshape({model.inputs[0].get_any_name(): list(crops.shape)})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return next(v for v in compiled(crops).values() if v.ndim == 4)


@pytest.mark.parametrize("model", sorted(MODEL_SIZES))
def test_paddle_network_gives_the_ir_heatmaps_on_real_person_crops(model, person_boxes):
    xml = MODELS / model / "model.xml"
    crops = crops_for(model, person_boxes)
    net = build_tinypose(MODEL_SIZES[model], num_joints=17)
    report = load_ir_weights(net, xml)
    assert (report.convs, report.batch_norms, report.weight_dtype) == (269, 268, "f16")
    assert report.ir_input_shape == (1, 3, *MODEL_SIZES[model])

    with paddle.no_grad():
        ours = net(paddle.to_tensor(crops)).numpy()
    theirs = ir_heatmaps(xml, crops)
    assert ours.shape == theirs.shape == (len(crops), 17, MODEL_SIZES[model][0] // 4, MODEL_SIZES[model][1] // 4)
    value_range = theirs.max() - theirs.min()
    assert value_range > 0.5  # real people: confident peaks
    assert np.abs(ours - theirs).max() < MAX_DIFF_OF_RANGE * value_range
    flat = ours.reshape(len(crops), 17, -1)
    assert (flat.argmax(-1) == theirs.reshape(len(crops), 17, -1).argmax(-1)).all()


def test_calibrated_batch_norms_keep_eval_output_and_match_it_in_training_mode(person_boxes):
    model = "tinypose_128x96_ov"
    crops = crops_for(model, person_boxes)
    net = build_tinypose(MODEL_SIZES[model])
    report = load_ir_weights(net, MODELS / model / "model.xml", calibration_crops=crops)
    assert report.calibration_crops == len(crops)
    theirs = ir_heatmaps(MODELS / model / "model.xml", crops)
    with paddle.no_grad():
        evaluated = net(paddle.to_tensor(crops)).numpy()
        net.train()  # batch statistics of the calibration batch = the calibrated running statistics
        trained_mode = net(paddle.to_tensor(crops)).numpy()
    value_range = theirs.max() - theirs.min()
    assert np.abs(evaluated - theirs).max() < MAX_DIFF_OF_RANGE * value_range
    assert np.abs(trained_mode - theirs).max() < 1e-3 * value_range
    # Without calibration, training-mode batch norm normalises every channel to unit variance.
    uncalibrated = build_tinypose(MODEL_SIZES[model])
    load_ir_weights(uncalibrated, MODELS / model / "model.xml")
    uncalibrated.train()
    with paddle.no_grad():
        assert np.abs(uncalibrated(paddle.to_tensor(crops)).numpy() - theirs).max() > 0.1 * value_range


def test_a_model_that_is_not_tinypose_is_a_clear_error():
    xml = MODELS / "picodet_s_192_lcnet_pedestrian_ov" / "model.xml"
    with pytest.raises(IrImportError, match="picodet_s_192_lcnet_pedestrian_ov"):
        load_ir_weights(build_tinypose(), xml)
    with pytest.raises(IrImportError, match="heatmap conv.*does not fit"):
        load_ir_weights(build_tinypose(num_joints=21), MODELS / "tinypose_128x96_ov" / "model.xml")
    with pytest.raises(IrImportError, match="with its .bin"):
        load_ir_weights(build_tinypose(), MODELS / "tinypose_128x96_ov" / "missing.xml")
    with pytest.raises(ValueError, match="multiples of 32"):
        build_tinypose((100, 96))
