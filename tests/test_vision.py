"""Numerics of the top-down pose path, checked against straightforward re-derivations of
PaddleDetection's deploy code (deploy/python/preprocess.py, picodet_postprocess.py,
keypoint_preprocess.py, keypoint_postprocess.py) on real images and real model outputs.

The re-derivations below follow PaddleDetection's per-box, per-joint loops on purpose:
they are the reference the vectorised code must reproduce.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from conftest import IMAGES, MODELS
from streampose.engines import load_engine
from streampose.models.folder import find_model
from streampose.models.infer_cfg import parse_infer_cfg
from streampose.vision import heatmap, picodet, topdown, yolox
from streampose.vision.detections import NmsSettings, select_batch
from streampose.vision.nms import nms
from streampose.vision.preprocess import ImagePreprocessor, PreprocessError, normalize_crops, prepare_images

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def image(name: str) -> np.ndarray:
    loaded = cv2.imread(str(IMAGES / name))
    assert loaded is not None, IMAGES / name
    return loaded


@pytest.fixture(scope="module")
def picodet_raw():
    folder = find_model("picodet_s_192_pedestrian", [MODELS])
    return folder, load_engine(folder, engine="openvino")


@pytest.fixture(scope="module")
def tinypose():
    folder = find_model("tinypose_128x96_ov", [MODELS])
    return folder, load_engine(folder, engine="openvino", max_batch=8)


def run_engine(engine, tensor: np.ndarray) -> list[np.ndarray]:
    results = engine.run({engine.inputs[0].name: tensor})
    return [results[t.name] for t in engine.outputs]


# ----------------------------------------------------------------- PaddleDetection re-derivations

def paddle_detector_input(bgr: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """decode_image (BGR->RGB), Resize(keep_ratio false, interp 2), NormalizeImage, Permute."""
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    fy, fx = size / float(rgb.shape[0]), size / float(rgb.shape[1])
    resized = cv2.resize(rgb, None, None, fx=fx, fy=fy, interpolation=2)
    normalized = (resized.astype(np.float32) / 255.0 - MEAN) / STD
    tensor = normalized.transpose(2, 0, 1)[None].astype(np.float32)
    return tensor, np.array([fy, fx], np.float32), np.array(resized.shape[:2], np.float32)


def paddle_hard_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, keep: int) -> list[int]:
    order = list(np.argsort(-scores, kind="stable")[:200])
    picked = []
    while order:
        best = order.pop(0)
        picked.append(best)
        if len(picked) == keep:
            break
        rest = np.array(order, np.int64)
        if len(rest) == 0:
            break
        low = np.maximum(boxes[rest, :2], boxes[best, :2])
        high = np.minimum(boxes[rest, 2:], boxes[best, 2:])
        overlap = np.clip(high - low, 0, None).prod(axis=1)
        area = lambda b: np.clip(b[..., 2:] - b[..., :2], 0, None).prod(axis=-1)  # noqa: E731
        iou = overlap / (area(boxes[rest]) + area(boxes[best]) - overlap + 1e-5)
        order = [int(i) for i, o in zip(rest, iou) if o <= threshold]
    return picked


def paddle_picodet_postprocess(outputs, strides, input_size, im_shape, scale_factor, score_threshold=0.3):
    """PicoDetPostProcess for one image with one class: per-level decode, threshold, NMS, clip, rescale."""
    levels = len(strides)
    decoded, kept_scores = [], []
    for stride, scores, distribution in zip(strides, outputs[:levels], outputs[levels:]):
        rows, cols = math.ceil(input_size / stride), math.ceil(input_size / stride)
        boxes = []
        for cell in range(rows * cols):
            cy, cx = (cell // cols + 0.5) * stride, (cell % cols + 0.5) * stride
            sides = []
            for side in range(4):
                logits = distribution[0, cell, side * 8:(side + 1) * 8].astype(np.float64)
                weights = np.exp(logits - logits.max())
                sides.append((weights / weights.sum()) @ np.arange(8) * stride)
            boxes.append([cx - sides[0], cy - sides[1], cx + sides[2], cy + sides[3]])
        decoded.append(np.array(boxes))
        kept_scores.append(scores[0, :, 0])
    boxes, scores = np.concatenate(decoded), np.concatenate(kept_scores)
    above = np.flatnonzero(scores > score_threshold)
    picked = above[paddle_hard_nms(boxes[above], scores[above], 0.5, 100)]
    result = boxes[picked].copy()
    result[:, 0::2] = result[:, 0::2].clip(0, im_shape[1])
    result[:, 1::2] = result[:, 1::2].clip(0, im_shape[0])
    result /= np.concatenate([scale_factor[::-1], scale_factor[::-1]])
    return result, scores[picked]


def paddle_affine(center, size, output_size, inverse=False) -> np.ndarray:
    """get_affine_transform(center, size, rot=0, output_size): three point pairs through OpenCV."""
    src_w, (dst_w, dst_h) = size[0], output_size

    def third(a, b):
        d = a - b
        return b + np.array([-d[1], d[0]], np.float32)

    src = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + np.array([0, -0.5 * src_w])
    src[2] = third(src[0], src[1])
    dst = np.zeros((3, 2), np.float32)
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = dst[0] + np.array([0, -0.5 * dst_w])
    dst[2] = third(dst[0], dst[1])
    return cv2.getAffineTransform(dst, src) if inverse else cv2.getAffineTransform(src, dst)


def paddle_expand_crop(box, image_h, image_w, expand_ratio=0.3):
    """expand_crop's rectangle (xmin, ymin, xmax, ymax), clipped to the image as deploy does."""
    xmin, ymin, xmax, ymax = (int(v) for v in box)
    h_half = (ymax - ymin) * (1 + expand_ratio) / 2.0
    w_half = (xmax - xmin) * (1 + expand_ratio) / 2.0
    if h_half > w_half * 4 / 3:
        w_half = h_half * 0.75
    cy, cx = (ymin + ymax) / 2.0, (xmin + xmax) / 2.0
    return (max(0, int(cx - w_half)), max(0, int(cy - h_half)),
            min(image_w - 1, int(cx + w_half)), min(image_h - 1, int(cy + h_half)))


def paddle_crop_input(bgr, rect, trainsize):
    """Crop, BGR->RGB, TopDownEvalAffine (center = crop centre, width sets the zoom), normalize."""
    crop = cv2.cvtColor(bgr[rect[1]:rect[3], rect[0]:rect[2]], cv2.COLOR_BGR2RGB)
    size = np.array(crop.shape[:2], np.float32)[::-1]
    warped = cv2.warpAffine(crop, paddle_affine(size / 2, size, trainsize), tuple(trainsize),
                            flags=cv2.INTER_LINEAR)
    return ((warped.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def paddle_hrnet_postprocess(heatmaps, centers, sizes, use_dark=True):
    """HRNetPostProcess.get_final_preds, joint by joint; sizes are scale * 200."""
    heatmaps = heatmaps.copy()
    n, k, height, width = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    maxvals = flat.max(axis=2)
    coords = np.zeros((n, k, 2))
    for i in range(n):
        for j in range(k):
            if maxvals[i, j] > 0:
                index = int(np.argmax(flat[i, j]))
                coords[i, j] = index % width, index // width
    if use_dark:
        for i in range(n):
            for j in range(k):
                original_max = heatmaps[i, j].max()
                framed = np.zeros((height + 2, width + 2))
                framed[1:-1, 1:-1] = heatmaps[i, j]
                blurred = cv2.GaussianBlur(framed, (3, 3), 0)[1:-1, 1:-1]
                heatmaps[i, j] = blurred * (original_max / blurred.max())
        logs = np.log(np.maximum(heatmaps, 1e-10))
    for i in range(n):
        for j in range(k):
            px, py = int(coords[i, j, 0]), int(coords[i, j, 1])
            if use_dark:
                hm = logs[i, j]
                if 1 < px < width - 2 and 1 < py < height - 2:
                    gradient = np.array([0.5 * (hm[py, px + 1] - hm[py, px - 1]),
                                         0.5 * (hm[py + 1, px] - hm[py - 1, px])])
                    dxx = 0.25 * (hm[py, px + 2] - 2 * hm[py, px] + hm[py, px - 2])
                    dyy = 0.25 * (hm[py + 2, px] - 2 * hm[py, px] + hm[py - 2, px])
                    dxy = 0.25 * (hm[py + 1, px + 1] - hm[py - 1, px + 1] - hm[py + 1, px - 1] + hm[py - 1, px - 1])
                    hessian = np.array([[dxx, dxy], [dxy, dyy]])
                    if dxx * dyy - dxy ** 2 != 0:
                        coords[i, j] -= np.linalg.inv(hessian) @ gradient
            else:
                hm = heatmaps[i, j]
                if 1 < px < width - 1 and 1 < py < height - 1:
                    coords[i, j] += 0.25 * np.sign([hm[py, px + 1] - hm[py, px - 1], hm[py + 1, px] - hm[py - 1, px]])
    preds = np.zeros_like(coords)
    for i in range(n):
        back = paddle_affine(centers[i], sizes[i], (width, height), inverse=True)
        for j in range(k):
            preds[i, j] = back @ np.array([coords[i, j, 0], coords[i, j, 1], 1.0])
    return preds, maxvals


# ----------------------------------------------------------------- detector pre-processing

@pytest.mark.parametrize("name", ["hrnet_demo.jpg", "four_people_walking_gy_demo_7.jpg"])
def test_detector_preprocessing_matches_paddle(picodet_raw, name):
    folder, _ = picodet_raw
    bgr = image(name)
    expected, scale_factor, im_shape = paddle_detector_input(bgr, 192)
    batch = prepare_images([bgr], folder.config.preprocess, "RGB", (192, 192))
    assert batch.tensor.shape == (1, 3, 192, 192)
    np.testing.assert_allclose(batch.tensor, expected, atol=1e-5)
    np.testing.assert_allclose(batch.scale_factor[0], scale_factor, rtol=1e-6)
    np.testing.assert_array_equal(batch.im_shape[0], im_shape)


def test_batch_of_frames_of_different_sizes_equals_single_frames(picodet_raw):
    folder, _ = picodet_raw
    frames = [image("hrnet_demo.jpg"), image("four_people_walking_gy_demo_7.jpg")]
    batch = prepare_images(frames, folder.config.preprocess, "RGB", (192, 192))
    for i, frame in enumerate(frames):
        single = prepare_images([frame], folder.config.preprocess, "RGB", (192, 192))
        np.testing.assert_array_equal(batch.tensor[i], single.tensor[0])
        np.testing.assert_array_equal(batch.scale_factor[i], single.scale_factor[0])


def test_letterbox_preprocessing_keeps_ratio_pads_top_left_and_keeps_bgr():
    config = parse_infer_cfg({"arch": "YOLOX", "label_list": ["person"], "Preprocess": [
        {"type": "Resize", "target_size": [416, 416], "keep_ratio": True, "interp": 1},
        {"type": "Pad", "size": [416, 416], "fill_value": [114, 114, 114]},
        {"type": "Permute"}]}, "test")
    bgr = image("four_people_walking_gy_demo_7.jpg")  # 450 x 300
    batch = prepare_images([bgr], config.preprocess, "BGR", (416, 416))
    scale = 416 / 450
    resized = cv2.resize(bgr, None, None, fx=scale, fy=scale, interpolation=1)
    assert resized.shape[:2] == (277, 416)
    np.testing.assert_array_equal(batch.tensor[0, :, :277], resized.transpose(2, 0, 1).astype(np.float32))
    assert (batch.tensor[0, :, 277:] == 114).all()
    np.testing.assert_allclose(batch.scale_factor[0], [scale, scale], rtol=1e-6)


@pytest.mark.parametrize("pad_first", [True, False])
def test_pad_fill_is_normalized_only_by_the_normalize_ops_after_it(pad_first):
    """Pad and PadStride fill in the value space of their place in the list, as PaddleDetection's
    sequential ops do: before NormalizeImage the fill is normalized with the image, after it not."""
    normalize = {"type": "NormalizeImage", "mean": MEAN.tolist(), "std": STD.tolist(), "is_scale": True}
    pads = [{"type": "PadStride", "stride": 32}, {"type": "Pad", "size": [320, 320], "fill_value": [114, 100, 90]}]
    resize = {"type": "Resize", "target_size": [200, 300], "keep_ratio": True, "interp": 1}
    ops = [resize, *pads, normalize] if pad_first else [resize, normalize, *pads]
    config = parse_infer_cfg({"arch": "YOLOX", "label_list": ["person"], "Preprocess": [*ops, {"type": "Permute"}]},
                             "test")
    bgr = image("four_people_walking_gy_demo_7.jpg")  # 450 x 300 -> 300 x 200, stride-padded to 320 x 224
    tensor = prepare_images([bgr, bgr], config.preprocess, "RGB", (None, None)).tensor
    assert tensor.shape == (2, 3, 320, 320)
    rgb = cv2.resize(bgr, None, None, fx=2 / 3, fy=2 / 3, interpolation=1)[..., ::-1].astype(np.float64)
    assert rgb.shape[:2] == (200, 300)
    normalized = lambda values: (np.asarray(values, np.float64) / 255.0 - MEAN) / STD  # noqa: E731
    np.testing.assert_allclose(tensor[1, :, :200, :300], normalized(rgb).transpose(2, 0, 1), atol=1e-5)
    stride_fill = normalized([0, 0, 0]) if pad_first else np.zeros(3)
    pad_fill = normalized([114, 100, 90]) if pad_first else np.array([114, 100, 90])
    for channel in range(3):
        np.testing.assert_allclose(tensor[:, channel, 200:224, :320], stride_fill[channel], atol=1e-5)
        np.testing.assert_allclose(tensor[:, channel, :200, 300:320], stride_fill[channel], atol=1e-5)
        np.testing.assert_allclose(tensor[:, channel, 224:], pad_fill[channel], atol=1e-5)


def test_resizing_after_normalizing_is_a_clear_error():
    config = parse_infer_cfg({"arch": "YOLOX", "label_list": ["person"], "Preprocess": [
        {"type": "NormalizeImage", "mean": [0, 0, 0], "std": [1, 1, 1]},
        {"type": "Resize", "target_size": [416, 416]}, {"type": "Permute"}]}, "test.yml")
    with pytest.raises(PreprocessError, match=r"test.yml: Resize after NormalizeImage"):
        ImagePreprocessor(config.preprocess, "RGB", (416, 416), "test.yml")


def test_preprocessing_larger_than_the_network_input_is_a_clear_error(picodet_raw):
    folder, _ = picodet_raw
    with pytest.raises(PreprocessError, match=r"192x192 .* network input is 160x160"):
        prepare_images([image("hrnet_demo.jpg")], folder.config.preprocess, "RGB", (160, 160))


def test_crop_normalization_matches_paddle_normalize_image(tinypose):
    folder, _ = tinypose
    crops = np.stack([image("hrnet_demo.jpg")[:128, :96], image("hrnet_demo.jpg")[100:228, 50:146]])
    expected = ((crops[..., ::-1].astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(normalize_crops(crops, folder.config.preprocess[1:], "RGB"), expected, atol=1e-5)


# ----------------------------------------------------------------- detector decoding and NMS

def test_nms_keeps_what_paddle_hard_nms_keeps():
    rng = np.random.default_rng(7)
    corners = rng.uniform(0, 100, (300, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 40, (300, 2))], axis=1)
    scores = rng.permutation(np.linspace(0.01, 0.99, 300)).astype(np.float32)
    above = np.flatnonzero(scores > 0.3)
    expected = above[paddle_hard_nms(boxes[above], scores[above], 0.5, 100)]
    kept = nms(boxes, scores, 0.3, 0.5, keep=100, candidates=200)
    np.testing.assert_array_equal(kept, expected)
    assert len(nms(boxes, scores, 0.3, 0.5, keep=5)) == 5


@pytest.mark.parametrize("name", ["four_people_walking_gy_demo_7.jpg", "coco_000000014439.jpg"])
def test_picodet_raw_heads_decode_like_paddle(picodet_raw, name):
    folder, engine = picodet_raw
    bgr = image(name)
    batch = prepare_images([bgr], folder.config.preprocess, "RGB", (192, 192))
    outputs = run_engine(engine, batch.tensor)
    assert picodet.output_form([o.shape for o in outputs], 4) == picodet.RAW_HEADS
    expected_boxes, expected_scores = paddle_picodet_postprocess(outputs, (8, 16, 32, 64), 192,
                                                                 batch.im_shape[0], batch.scale_factor[0])
    boxes, scores = picodet.decode_raw_heads(outputs, (8, 16, 32, 64), (192, 192))
    found = select_batch(boxes, scores[..., 0], NmsSettings(0.3, 0.5, 1000, 100), batch)[0]
    assert len(found.boxes) == len(expected_boxes) >= 4
    np.testing.assert_allclose(found.boxes, expected_boxes, atol=1e-3)
    np.testing.assert_allclose(found.scores, expected_scores, atol=1e-6)


def test_nms_in_graph_rows_are_split_per_frame_filtered_and_clipped():
    rows = np.array([[0, 0.90, 10, 10, 50, 90],      # frame 0: a person
                     [2, 0.95, 20, 20, 60, 60],      # frame 0: another class
                     [0, 0.20, 30, 30, 40, 40],      # frame 0: below the threshold
                     [0, 0.70, 100, 20, 500, 400],   # frame 1: reaches past the 400x300 frame
                     [0, 0.80, 10, 20, 30, 40]], np.float32)
    counts = np.array([3, 2], np.int32)
    assert picodet.output_form([rows.shape, counts.shape], 4) == picodet.NMS_IN_GRAPH
    first, second = picodet.detections_from_graph_nms([rows, counts], 0, [(100, 100), (300, 400)], 0.3, 10)
    np.testing.assert_array_equal(first.boxes, [[10, 10, 50, 90]])
    np.testing.assert_array_equal(second.scores, np.float32([0.8, 0.7]))
    np.testing.assert_array_equal(second.boxes, [[10, 20, 30, 40], [100, 20, 400, 300]])
    (capped,) = picodet.detections_from_graph_nms([rows[3:], counts[1:]], 0, [(300, 400)], 0.3, 1)
    assert len(capped.boxes) == 1 and capped.scores[0] == np.float32(0.8)


def test_unknown_picodet_output_shapes_are_a_clear_error():
    with pytest.raises(picodet.OutputFormError, match="match no known export form"):
        picodet.output_form([(-1, 100, 7)], num_levels=4)


def test_yolox_decoding_on_known_values():
    output = np.zeros((1, 52 * 52 + 26 * 26 + 13 * 13, 85), np.float32)
    cell = 52 * 52 + 26 * 3 + 5            # stride 16, row 3, column 5
    output[0, cell, :6] = [0.5, 0.25, np.log(2.0), np.log(4.0), 0.8, 0.5]
    boxes, scores = yolox.decode(output, (416, 416), person_class=0)
    centre = np.array([(5 + 0.5) * 16, (3 + 0.25) * 16])
    np.testing.assert_allclose(boxes[0, cell], [*(centre - [16, 32]), *(centre + [16, 32])], rtol=1e-6)
    assert scores[0, cell] == pytest.approx(0.4)
    with pytest.raises(yolox.YoloxOutputError, match="416x416"):
        yolox.decode(output[:, :100], (416, 416), person_class=0)


# ----------------------------------------------------------------- top-down crop

def test_affine_round_trip_and_paddle_convention():
    rng = np.random.default_rng(3)
    center = rng.uniform(50, 500, (20, 2))
    scale = rng.uniform(0.2, 3.0, (20, 1)) * [1, 4 / 3]
    forward = topdown.affine_matrices(center, scale, (96, 128))
    back = topdown.affine_matrices(center, scale, (96, 128), inverse=True)
    points = rng.uniform(-100, 700, (20, 17, 2))
    np.testing.assert_allclose(topdown.apply_affine(topdown.apply_affine(points, forward), back), points, atol=1e-9)
    to_heatmap_back = topdown.affine_matrices(center, scale, (24, 32), inverse=True)
    for i in range(20):
        np.testing.assert_allclose(forward[i], paddle_affine(center[i], scale[i] * 200, (96, 128)), atol=1e-3)
        np.testing.assert_allclose(to_heatmap_back[i], paddle_affine(center[i], scale[i] * 200, (24, 32),
                                                                     inverse=True), atol=1e-3)


def test_crop_regions_are_paddle_expand_crop_inside_the_frame_and_unclipped_outside():
    height, width = 300, 450
    inside = np.array([[96.5, 80.1, 151.8, 256.4], [199.8, 84.8, 263.5, 258.0], [150.2, 120.7, 280.9, 200.3]])
    regions = topdown.crop_regions(inside, 0.3, 0.75)
    for box, region in zip(inside, regions):
        assert tuple(region) == paddle_expand_crop(box, height, width)
    at_edge = np.array([[0.0, 20.0, 60.0, 290.0]])
    region = topdown.crop_regions(at_edge, 0.3, 0.75)[0]
    assert region[0] < 0 and region[3] > height - 1       # not clipped: the person keeps their scale
    _, scale = topdown.center_scale(region[None], 0.75)
    assert scale[0, 0] * 200 >= (region[3] - region[1]) * 0.75 - 1


def test_degenerate_boxes_get_finite_crops():
    boxes = np.array([[450.0, 10.0, 450.0, 10.0], [5.0, 5.0, 5.2, 80.0]])
    to_crop, _, scale = topdown.crop_affines(boxes, 0.3, (96, 128))
    assert np.isfinite(to_crop).all()
    assert (scale > 0).all()


def test_crop_pixels_match_paddle_crop_for_a_person_inside_the_frame(tinypose):
    folder, _ = tinypose
    bgr = image("four_people_walking_gy_demo_7.jpg")
    box = np.array([[251.3, 92.1, 312.5, 257.7]])
    region = topdown.crop_regions(box, 0.3, 0.75)
    rect = paddle_expand_crop(box[0], *bgr.shape[:2])
    assert tuple(region[0]) == rect
    to_crop, _, _ = topdown.crop_affines(box, 0.3, (96, 128))
    crops = topdown.warp_crops([bgr], np.zeros(1, int), to_crop, (96, 128))
    mine = normalize_crops(crops, folder.config.preprocess[1:], "RGB")[0]
    expected = paddle_crop_input(bgr, rect, (96, 128))
    # Rows next to the crop's edges differ: deploy samples black beyond its crop, we the frame.
    np.testing.assert_allclose(mine[:, 2:-2, 2:-2], expected[:, 2:-2, 2:-2], atol=1e-5)


# ----------------------------------------------------------------- heatmaps

def gaussian_maps(centres: np.ndarray, height=32, width=24, sigma=2.0) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    maps = np.exp(-((x - centres[..., 0, None, None]) ** 2 + (y - centres[..., 1, None, None]) ** 2) / (2 * sigma ** 2))
    return maps.astype(np.float32)


def test_dark_recovers_a_subpixel_gaussian_peak():
    rng = np.random.default_rng(11)
    centres = rng.uniform([4, 4], [20, 28], (6, 17, 2))
    maps = gaussian_maps(centres)
    peaks, confidence = heatmap.decode_heatmaps(maps, use_dark=True)
    plain, _ = heatmap.decode_heatmaps(maps, use_dark=False)
    dark_error = np.abs(peaks - centres).max()
    assert dark_error < 0.1
    assert np.abs(plain - centres).max() > 2 * dark_error
    np.testing.assert_allclose(confidence, maps.reshape(6, 17, -1).max(axis=2))


def test_flip_order_swaps_left_and_right_and_keeps_the_rest():
    assert heatmap.flip_order(17).tolist() == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    assert heatmap.flip_order(5, [(3, 0), (1, 4)]).tolist() == [3, 4, 2, 0, 1]
    assert heatmap.flip_order(3, []).tolist() == [0, 1, 2]


def test_flip_back_undoes_mirroring_with_paddle_shift():
    rng = np.random.default_rng(5)
    maps = rng.random((2, 17, 32, 24)).astype(np.float32)
    swap = np.arange(17)
    for left, right in heatmap.COCO_FLIP_PAIRS:
        swap[left], swap[right] = right, left
    restored = heatmap.flip_back(maps[:, swap, :, ::-1])
    np.testing.assert_array_equal(restored[..., 1:], maps[..., :-1])
    np.testing.assert_array_equal(restored[..., 0], maps[..., 0])


@pytest.mark.parametrize("use_dark", [True, False])
def test_heatmap_decoding_matches_paddle_on_real_heatmaps(tinypose, use_dark):
    folder, engine = tinypose
    bgr = image("four_people_walking_gy_demo_7.jpg")
    boxes = np.array([[96.5, 80.1, 151.8, 256.4], [152.1, 94.7, 199.3, 260.8], [199.8, 84.8, 263.5, 258.0],
                      [251.3, 92.1, 312.5, 257.7]])
    to_crop, center, scale = topdown.crop_affines(boxes, 0.3, (96, 128))
    crops = topdown.warp_crops([bgr], np.zeros(4, int), to_crop, (96, 128))
    maps = run_engine(engine, normalize_crops(crops, folder.config.preprocess[1:], "RGB"))[0]
    expected, expected_conf = paddle_hrnet_postprocess(maps, center, scale * 200, use_dark)
    peaks, confidence = heatmap.decode_heatmaps(maps, use_dark)
    keypoints = topdown.apply_affine(peaks, topdown.affine_matrices(center, scale, (24, 32), inverse=True))
    np.testing.assert_allclose(keypoints, expected, atol=1e-3)
    np.testing.assert_allclose(confidence, expected_conf, rtol=1e-6)


def test_keypoints_agree_with_paddle_deploy_pipeline_within_half_a_pixel(tinypose):
    """The whole crop -> network -> decode chain against deploy's, for persons whose crop lies
    inside the frame. The one deliberate difference left: deploy rounds the crop centre when
    mapping back (a shift of 0 or 0.5 px per axis), which the reference undoes here."""
    folder, engine = tinypose
    bgr = image("four_people_walking_gy_demo_7.jpg")
    boxes = np.array([[96.5, 80.1, 151.8, 256.4], [152.1, 94.7, 199.3, 260.8], [251.3, 92.1, 312.5, 257.7]])
    expected = []
    for box in boxes:
        rect = paddle_expand_crop(box, *bgr.shape[:2])
        maps = run_engine(engine, paddle_crop_input(bgr, rect, (96, 128))[None])[0]
        size = np.array([rect[2] - rect[0], rect[3] - rect[1]], np.float64)
        preds, maxvals = paddle_hrnet_postprocess(maps, (size / 2)[None], size[None])
        expected.append(np.concatenate([preds[0] + rect[:2], maxvals[0, :, None]], axis=1))
    expected = np.array(expected)
    to_crop, center, scale = topdown.crop_affines(boxes, 0.3, (96, 128))
    crops = topdown.warp_crops([bgr], np.zeros(3, int), to_crop, (96, 128))
    maps = run_engine(engine, normalize_crops(crops, folder.config.preprocess[1:], "RGB"))[0]
    peaks, confidence = heatmap.decode_heatmaps(maps)
    keypoints = topdown.apply_affine(peaks, topdown.affine_matrices(center, scale, (24, 32), inverse=True))
    confident = expected[..., 2] > 0.3
    assert confident.sum() > 40
    assert np.abs(keypoints - expected[..., :2])[confident].max() < 0.5
    np.testing.assert_allclose(confidence, expected[..., 2], atol=0.02)
