"""Build and export a tiny joint detection-embedding (JDE) network, FairMOT's interface in miniature.

    python scripts/make_tiny_jde.py OUT_DIR

No FairMOT weights can be had here, so this writes a small network with the same inputs and
outputs as a PaddleDetection FairMOT export, for testing the `jde` stage end to end:

- inputs  image (1, 3, H, W) float32 (letterboxed, RGB, 0..1), im_shape (1, 2) and
          scale_factor (1, 2) float32, as the LetterBoxResize pre-processing feeds them;
- outputs detections (K, 6): class, score, x0, y0, x1, y1 in original image pixels, and
          embeddings (K, EMBEDDING_DIM).

It "detects" solid rectangles painted in the colours of PALETTE: one candidate per palette
colour (like CenterNet's fixed top-k, unused candidates score 0). A pixel belongs to a colour
when it lies within COLOUR_RADIUS of it (RGB, 0..1). The candidate's box spans that colour's
pixels, its score grows with their count (count / (count + SCORE_HALF_PIXELS)), and its
embedding is their mean colour, centred on grey and spread over EMBEDDING_DIM dimensions by a
fixed random projection, so distinct colours get distant embeddings whatever their position.
Boxes are mapped back to the original image in the network, as FairMOT's CenterNetPostProcess
does: the letterbox padding ((input size - im_shape) / 2) is removed and the result divided by
scale_factor.

The export is a Paddle program (model.pdmodel + model.pdiparams, the format of PaddleDetection's
released FairMOT models) beside an infer_cfg.yml written as PaddleDetection's exporter writes
it for FairMOT (arch, LetterBoxResize pre-processing, label_list, tracker section), so both the
Paddle and the OpenVINO engines read it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import yaml

INPUT_SIZE = (320, 576)  # network input height, width: FairMOT's 576x320 export
# RGB 0..255. Pairwise at least 0.5 apart in RGB 0..1, and far from dark backgrounds and the grey padding.
PALETTE = np.array([
    (230, 40, 40),    # red
    (40, 200, 60),    # green
    (50, 80, 230),    # blue
    (230, 210, 40),   # yellow
    (210, 50, 200),   # magenta
    (40, 200, 210),   # cyan
], np.float32)
COLOUR_RADIUS = 0.25
SCORE_HALF_PIXELS = 64.0
EMBEDDING_DIM = 128
TRACKER = {"conf_thres": 0.4, "tracked_thresh": 0.4, "metric_type": "cosine", "min_box_area": 200,
           "vertical_ratio": 1.6}


def infer_cfg() -> dict:
    """infer_cfg.yml as PaddleDetection's exporter writes it for a FairMOT model."""
    height, width = INPUT_SIZE
    return {
        "mode": "paddle",
        "draw_threshold": 0.5,
        "metric": "MOT",
        "use_dynamic_shape": False,
        "tracker": dict(TRACKER),
        "arch": "FairMOT",
        "min_subgraph_size": 5,
        "Preprocess": [
            {"type": "LetterBoxResize", "target_size": [height, width]},
            {"type": "NormalizeImage", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "is_scale": True},
            {"type": "Permute"},
        ],
        "label_list": ["pedestrian"],
    }


def build(out_dir: Path) -> None:
    """Write model.pdmodel, model.pdiparams and infer_cfg.yml into `out_dir`."""
    # Paddle 3 writes PIR programs (model.json) unless told otherwise before it is imported;
    # OpenVINO reads only the older program format.
    os.environ["FLAGS_enable_pir_api"] = "0"
    import paddle

    paddle.enable_static()
    height, width = INPUT_SIZE
    colours = PALETTE / 255.0
    count = len(colours)
    projection = np.random.default_rng(0).standard_normal((3, EMBEDDING_DIM)).astype(np.float32)
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        def constant(name: str, value: np.ndarray):
            return paddle.static.create_parameter(
                value.shape, "float32", name=name,
                default_initializer=paddle.nn.initializer.Assign(value.astype(np.float32)))

        image = paddle.static.data("image", [-1, 3, height, width], "float32")
        im_shape = paddle.static.data("im_shape", [-1, 2], "float32")
        scale_factor = paddle.static.data("scale_factor", [-1, 2], "float32")

        # Squared distance of every pixel to every palette colour: |x|^2 - 2 p.x + |p|^2.
        cross = paddle.nn.functional.conv2d(image, constant("palette_weight", -2 * colours[:, :, None, None]),
                                            constant("palette_bias", np.square(colours).sum(axis=1)))
        distance = cross + paddle.mean(image * image, axis=1, keepdim=True) * 3
        masks = paddle.cast(distance < COLOUR_RADIUS ** 2, "float32")                 # (1, K, H, W)
        pixels = paddle.reshape(paddle.mean(masks, axis=[2, 3]) * (height * width), [count, 1])
        present = paddle.cast(pixels > 0, "float32")

        # Extents: the largest x + 1 among the colour's pixels, and width minus the largest (width - x).
        xs = constant("column_index", np.arange(width, dtype=np.float32).reshape(1, 1, 1, width))
        ys = constant("row_index", np.arange(height, dtype=np.float32).reshape(1, 1, height, 1))
        x1 = width - paddle.max(masks * (width - xs), axis=[2, 3])
        x2 = paddle.max(masks * (xs + 1), axis=[2, 3])
        y1 = height - paddle.max(masks * (height - ys), axis=[2, 3])
        y2 = paddle.max(masks * (ys + 1), axis=[2, 3])
        boxes = paddle.reshape(paddle.concat([x1, y1, x2, y2], axis=0), [4, count])
        boxes = paddle.transpose(boxes, [1, 0])                                        # (K, 4) input pixels

        # Back to the original image, as CenterNetPostProcess: remove the centred padding, divide by the scale.
        pad = constant("input_size_wh", np.array([[width, height]], np.float32)) - paddle.flip(im_shape, [1])
        pad_xyxy = paddle.concat([pad, pad], axis=1) / 2
        scale_xyxy = paddle.concat([paddle.flip(scale_factor, [1])] * 2, axis=1)
        boxes = (boxes - pad_xyxy) / scale_xyxy * present

        score = pixels / (pixels + SCORE_HALF_PIXELS)
        label = paddle.zeros_like(score)
        detections = paddle.concat([label, score, boxes], axis=1)                      # (K, 6)

        channel_sums = [paddle.mean(masks * image[:, c:c + 1], axis=[2, 3]) for c in range(3)]
        mean_colour = paddle.reshape(paddle.concat(channel_sums, axis=0), [3, count])
        mean_colour = paddle.transpose(mean_colour, [1, 0]) * (height * width) / paddle.clip(pixels, min=1.0)
        centred = paddle.unsqueeze((mean_colour - 0.5) * present, 2)                   # (K, 3, 1)
        spread = paddle.unsqueeze(constant("embedding_projection", projection), 0)    # (1, 3, D)
        embeddings = paddle.mean(centred * spread, axis=1) * 3                         # (K, D)

    executor = paddle.static.Executor(paddle.CPUPlace())
    executor.run(startup)
    out_dir.mkdir(parents=True, exist_ok=True)
    paddle.static.save_inference_model(str(out_dir / "model"), [image, im_shape, scale_factor],
                                       [detections, embeddings], executor, program=main)
    (out_dir / "infer_cfg.yml").write_text(yaml.safe_dump(infer_cfg(), sort_keys=False), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    build(Path(sys.argv[1]))
