"""Build and export a tiny, randomly initialised PP-YOLOE(+) network, with or without NMS.

    python scripts/make_tiny_ppyoloe.py OUT_DIR [--nms]

No PP-YOLOE weights can be had here, so this writes a small network with the inputs, head and
post-processing of a PaddleDetection PP-YOLOE export (ppdet/modeling/heads/ppyoloe_head.py), for
testing that such a folder loads and runs as a detector on every engine that reads it:

- inputs  image (N, 3, H, W) float32 RGB 0..1 (PP-YOLOE+: Resize without keeping the ratio,
          NormalizeImage with mean 0, std 1) and scale_factor (N, 2) float32 (y, x);
- head    per stride 8, 16, 32 a class-score map (sigmoid) and, per box side, REG_MAX + 1 bins
          whose softmax expectation is the side's distance from the anchor point (cell centre)
          in strides; boxes x1, y1, x2, y2 = (anchor -/+ distances) x stride, divided by
          scale_factor: frame pixels, as PPYOLOEHead.post_process gives them;
- outputs without NMS (`exclude_nms`): boxes (N, A, 4) and scores (N, C, A); with NMS: the
          multiclass_nms3 op's rows (M, 6) class, score, x1, y1, x2, y2 and counts (N,).

The backbone is a stand-in: each level is the image average-pooled to its stride, then a 1x1
convolution with random weights (seed 0); class biases are set so that a few hundred anchors
score above the NMS threshold. infer_cfg.yml is written as PaddleDetection's exporter writes it
for PP-YOLOE+ (`arch: YOLO`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import yaml

INPUT_SIZE = 320
STRIDES = (8, 16, 32)
REG_MAX = 16
LABELS = ["person", "bicycle"]
NMS = {"name": "MultiClassNMS", "keep_top_k": 100, "nms_threshold": 0.6, "nms_top_k": 1000, "score_threshold": 0.4}


def infer_cfg() -> dict:
    return {
        "mode": "paddle",
        "draw_threshold": 0.5,
        "metric": "COCO",
        "use_dynamic_shape": False,
        "arch": "YOLO",
        "min_subgraph_size": 3,
        "Preprocess": [
            {"type": "Resize", "target_size": [INPUT_SIZE, INPUT_SIZE], "keep_ratio": False, "interp": 2},
            {"type": "NormalizeImage", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "is_scale": True,
             "norm_type": "none"},
            {"type": "Permute"},
        ],
        "label_list": list(LABELS),
        "NMS": dict(NMS),
    }


def build(out_dir: Path, with_nms: bool) -> None:
    """Write model.pdmodel, model.pdiparams and infer_cfg.yml into `out_dir`."""
    # Paddle 3 writes PIR programs unless told otherwise before it is imported; OpenVINO reads only
    # the older program format.
    os.environ["FLAGS_enable_pir_api"] = "0"
    import paddle
    from paddle.base.layer_helper import LayerHelper

    paddle.enable_static()
    rng = np.random.default_rng(0)
    classes = len(LABELS)
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        def constant(name: str, value: np.ndarray):
            return paddle.static.create_parameter(
                value.shape, "float32", name=name,
                default_initializer=paddle.nn.initializer.Assign(value.astype(np.float32)))

        image = paddle.static.data("image", [-1, 3, INPUT_SIZE, INPUT_SIZE], "float32")
        scale_factor = paddle.static.data("scale_factor", [-1, 2], "float32")
        scores, distances, anchors, strides = [], [], [], []
        for stride in STRIDES:
            cells = INPUT_SIZE // stride
            feature = paddle.nn.functional.avg_pool2d(image, stride, stride)            # (N, 3, h, w)
            logits = paddle.nn.functional.conv2d(
                feature, constant(f"cls_w{stride}", rng.normal(0, 4, (classes, 3, 1, 1))),
                constant(f"cls_b{stride}", np.full(classes, -2.5)))
            # sigmoid(z) = softmax([z, 0])[0]: Paddle 3's legacy static graph builds softmax but not
            # sigmoid or exp (their generated ops accept only PIR values).
            logits = paddle.reshape(logits, [-1, classes, cells * cells, 1])
            pair = paddle.nn.functional.softmax(paddle.concat([logits, paddle.zeros_like(logits)], axis=-1), axis=-1)
            scores.append(paddle.reshape(paddle.split(pair, 2, axis=-1)[0], [-1, classes, cells * cells]))
            bins = paddle.nn.functional.conv2d(
                feature, constant(f"reg_w{stride}", rng.normal(0, 2, (4 * (REG_MAX + 1), 3, 1, 1))),
                constant(f"reg_b{stride}", rng.normal(0, 1, 4 * (REG_MAX + 1))))
            bins = paddle.nn.functional.softmax(paddle.reshape(bins, [-1, 4, REG_MAX + 1, cells * cells]), axis=2)
            projection = constant(f"proj{stride}", np.arange(REG_MAX + 1).reshape(1, 1, REG_MAX + 1, 1))
            expectation = paddle.mean(bins * projection, axis=2) * (REG_MAX + 1)          # (sum: no static op)
            distances.append(paddle.transpose(expectation, [0, 2, 1]))                     # (N, hw, 4)
            y, x = np.mgrid[0:cells, 0:cells]
            anchors.append(np.stack([x.ravel(), y.ravel()], axis=1) + 0.5)
            strides.append(np.full((cells * cells, 1), stride))
        pred_scores = paddle.concat(scores, axis=-1)                                     # (N, C, A)
        pred_dist = paddle.concat(distances, axis=1)                                     # (N, A, 4)
        anchor_points = constant("anchor_points", np.concatenate(anchors)[None])       # (1, A, 2) strides
        stride_tensor = constant("stride_tensor", np.concatenate(strides)[None])       # (1, A, 1)
        left_top, right_bottom = paddle.split(pred_dist, 2, axis=-1)
        boxes = paddle.concat([anchor_points - left_top, anchor_points + right_bottom], axis=-1) * stride_tensor
        scale = paddle.unsqueeze(paddle.tile(paddle.flip(scale_factor, [-1]), [1, 2]), 1)   # (N, 1, 4) x, y
        pred_bboxes = boxes / scale
        if with_nms:
            helper = LayerHelper("multiclass_nms3")
            rows = helper.create_variable_for_type_inference("float32")
            index = helper.create_variable_for_type_inference("int32")
            counts = helper.create_variable_for_type_inference("int32")
            helper.append_op(
                type="multiclass_nms3", inputs={"BBoxes": pred_bboxes, "Scores": pred_scores},
                attrs={"background_label": -1, "score_threshold": NMS["score_threshold"],
                       "nms_top_k": NMS["nms_top_k"], "nms_threshold": NMS["nms_threshold"],
                       "keep_top_k": NMS["keep_top_k"], "nms_eta": 1.0, "normalized": False},
                outputs={"Out": rows, "Index": index, "NmsRoisNum": counts})
            outputs = [rows, counts]
        else:
            outputs = [pred_bboxes, pred_scores]

    executor = paddle.static.Executor(paddle.CPUPlace())
    executor.run(startup)
    out_dir.mkdir(parents=True, exist_ok=True)
    paddle.static.save_inference_model(str(out_dir / "model"), [image, scale_factor], outputs, executor,
                                       program=main)
    (out_dir / "infer_cfg.yml").write_text(yaml.safe_dump(infer_cfg(), sort_keys=False), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] != "--nms"):
        sys.exit(__doc__.split("\n\n")[1])
    build(Path(sys.argv[1]), len(sys.argv) == 3)
