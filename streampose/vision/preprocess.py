"""Image pre-processing as an exported model's infer_cfg.yml describes it.

The ops and their numerics follow PaddleDetection's deploy/python/preprocess.py:

- Resize: `cv2.resize` by factors fx = target_w / w, fy = target_h / h, or with
  keep_ratio one factor, target_min / min(h, w) unless that makes the long side
  exceed target_max (then target_max / max(h, w)); `interp` is an OpenCV code.
- NormalizeImage: float32, optionally / 255 (is_scale), then (x - mean) / std.
- Permute: HWC -> CHW (always last here: networks take NCHW).
- PadStride: zero-pad height and width up to a multiple of `stride`.
- Pad: a fixed canvas filled with `fill_value`, the image at the top-left.
- LetterBoxResize (FairMOT/JDE): one factor, min(target_h / h, target_w / w), `cv2.resize`
  with INTER_AREA to round(w x factor) by round(h x factor), then grey (127.5) borders
  centred around it up to the target size. `im_shape` is the resized size without the
  borders and `scale_factor` the factor: these networks find the borders from `im_shape`
  and map their boxes back to the original image themselves.

Frames arrive BGR (OpenCV); PaddleDetection networks take RGB, so channels are
reversed unless the config says `channel_order: BGR`. Resize works per channel, so
it runs before the reversal on the smaller image; the result is the same.

A batch of frames of different sizes is assembled on one canvas, each image at the
top-left with zeros after it, as PaddleDetection's create_inputs does; boxes map
back through `scale_factor`, which padding does not change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from streampose.models.infer_cfg import PreprocessOp


IMAGE_OPS = frozenset({"Resize", "NormalizeImage", "Permute", "PadStride", "Pad"})
LETTERBOX_OPS = frozenset({"LetterBoxResize", "NormalizeImage", "Permute"})
# LetterBoxResize's border value, on 0..255 pixels (on uint8 images OpenCV rounds it to 128).
LETTERBOX_GREY = 127.5
CROP_OPS = frozenset({"NormalizeImage", "Permute"})


class PreprocessError(ValueError):
    """The pre-processing cannot produce what the network takes."""


def check_ops(ops: Sequence[PreprocessOp], supported: frozenset[str], source: str) -> None:
    """Raise PreprocessError naming `source` if an op is not in `supported`."""
    for op in ops:
        if op.type not in supported:
            raise PreprocessError(f"{source}: pre-processing op {op.type} is not supported here "
                                  f"(supported: {', '.join(sorted(supported))})")


def image_input(folder, engine, error: type[ValueError]) -> tuple[str, tuple[int | None, int | None]]:
    """The name and (H, W) of the network's one image input (N, 3, H, W); None where a side is
    dynamic. Raises `error` unless there is exactly one, or if its size disagrees with what the
    folder's infer_cfg.yml pre-processes to."""
    images = [t for t in engine.inputs if len(t.shape) == 4]
    if len(images) != 1:
        raise error(f"model {folder.name}: expected one image input (N, 3, H, W), got "
                    f"{[(t.name, list(t.shape)) for t in engine.inputs]}")
    size = tuple(d if d > 0 else None for d in images[0].shape[2:])
    expected = folder.config.input_size
    if expected is not None and None not in size and tuple(expected) != size:
        raise error(f"model {folder.name}: {folder.config.source} pre-processes to {expected[0]}x{expected[1]} "
                    f"(height x width) but the network input is {size[0]}x{size[1]}")
    return images[0].name, size


@dataclass
class ImageBatch:
    """Frames prepared for a network.

    tensor:       (B, 3, H, W) float32, the network input.
    scale_factor: (B, 2) float32, (y, x): resized size / original size, per frame.
    im_shape:     (B, 2) float32, (height, width) of each resized image before padding,
                  in network input pixels.
    """

    tensor: np.ndarray
    scale_factor: np.ndarray
    im_shape: np.ndarray


def resize_factors(height: int, width: int, params: Mapping) -> tuple[float, float]:
    """(fy, fx) of a Resize op for an image of this size."""
    target_h, target_w = params["target_size"]
    if not params.get("keep_ratio", True):
        return target_h / float(height), target_w / float(width)
    target_min, target_max = min(target_h, target_w), max(target_h, target_w)
    scale = float(target_min) / float(min(height, width))
    if np.round(scale * max(height, width)) > target_max:
        scale = float(target_max) / float(max(height, width))
    return scale, scale


def normalization(params: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """NormalizeImage as one multiply-add per channel, x * gain + offset, in network channel order."""
    if params.get("norm_type", "mean_std") == "none":
        gain, offset = np.ones(3), np.zeros(3)
    else:
        mean = np.asarray(params["mean"], np.float64)
        std = np.asarray(params["std"], np.float64)
        gain, offset = 1.0 / std, -mean / std
    if params.get("is_scale", True):
        gain = gain / 255.0
    return gain.astype(np.float32), offset.astype(np.float32)


def normalize_crops(crops: np.ndarray, ops: Sequence[PreprocessOp], channel_order: str) -> np.ndarray:
    """(N, H, W, 3) uint8 BGR crops -> (N, 3, H, W) float32 network input.

    `ops` may only normalize and permute (CROP_OPS): the crop was the geometric step.
    """
    check_ops(ops, CROP_OPS, "top-down crop")
    gain, offset = np.ones(3, np.float32), np.zeros(3, np.float32)
    for op in ops:
        if op.type == "NormalizeImage":
            gain, offset = normalization(op.params)
    tensor = np.empty((crops.shape[0], 3, *crops.shape[1:3]), np.float32)
    # Planes first, arithmetic after, on contiguous memory: faster than strided channel maths.
    for i, crop in enumerate(crops):
        planes = cv2.split(crop)
        for channel, plane in enumerate(planes[::-1] if channel_order == "RGB" else planes):
            tensor[i, channel] = plane
    tensor *= gain[:, None, None]
    tensor += offset[:, None, None]
    return tensor


def prepare_images(images: Sequence[np.ndarray], ops: Sequence[PreprocessOp], channel_order: str,
                   input_size: tuple[int | None, int | None]) -> ImageBatch:
    """Run infer_cfg `ops` on BGR uint8 `images` and stack them on one canvas.

    input_size: the network's (height, width); None for a dynamic dimension, which
    then takes the largest image of the batch.
    """
    prepared = [_prepare_one(image, ops, channel_order) for image in images]
    heights = [p[0].shape[0] for p in prepared]
    widths = [p[0].shape[1] for p in prepared]
    canvas_h = input_size[0] or max(heights)
    canvas_w = input_size[1] or max(widths)
    if max(heights) > canvas_h or max(widths) > canvas_w:
        raise PreprocessError(
            f"pre-processing produced {max(heights)}x{max(widths)} (height x width) images but the network "
            f"input is {canvas_h}x{canvas_w}; the Resize/Pad sizes in infer_cfg.yml do not match the network")
    tensor = np.zeros((len(images), 3, canvas_h, canvas_w), np.float32)
    for i, (image, _, _) in enumerate(prepared):
        tensor[i, :, :image.shape[0], :image.shape[1]] = image.transpose(2, 0, 1)
    return ImageBatch(
        tensor=tensor,
        scale_factor=np.array([p[1] for p in prepared], np.float32).reshape(-1, 2),
        im_shape=np.array([p[2] for p in prepared], np.float32).reshape(-1, 2),
    )


def _prepare_one(image: np.ndarray, ops: Sequence[PreprocessOp],
                 channel_order: str) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """One image through `ops`: (HWC float32 in network channel order, (fy, fx), resized (h, w))."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise PreprocessError(f"expected an (H, W, 3) uint8 BGR image, got {image.shape} {image.dtype}")
    scale = (1.0, 1.0)
    data = image
    resized = image.shape[:2]
    in_network_order = False  # BGR uint8 until the first op that is not a Resize or LetterBoxResize
    for op in ops:
        if op.type == "Resize":
            fy, fx = resize_factors(data.shape[0], data.shape[1], op.params)
            data = cv2.resize(data, None, None, fx=fx, fy=fy, interpolation=op.params.get("interp", 1))
            scale = (scale[0] * fy, scale[1] * fx)
            resized = data.shape[:2]
            continue
        if op.type == "LetterBoxResize":
            data, factor, resized = letterbox(data, op.params["target_size"])
            scale = (scale[0] * factor, scale[1] * factor)
            continue
        if not in_network_order:
            data = _to_network_order(data, channel_order)
            in_network_order = True
        if op.type == "NormalizeImage":
            gain, offset = normalization(op.params)
            data = data * gain + offset
        elif op.type == "PadStride":
            data = _pad_stride(data, op.params["stride"])
        elif op.type == "Pad":
            data = _pad(data, op.params)
        elif op.type != "Permute":
            raise PreprocessError(f"pre-processing op {op.type} is not supported for whole images "
                                  f"(supported: {', '.join(sorted(IMAGE_OPS | LETTERBOX_OPS))})")
    if not in_network_order:
        data = _to_network_order(data, channel_order)
    return data, scale, resized


def letterbox(image: np.ndarray, target_size: int | Sequence[int]) -> tuple[np.ndarray, float, tuple[int, int]]:
    """LetterBoxResize as PaddleDetection's deploy code does it: (the image resized by one
    factor and bordered with grey, centred, to `target_size` (height, width), the factor,
    the resized (height, width) without the borders)."""
    target_h, target_w = (target_size, target_size) if isinstance(target_size, int) else target_size
    height, width = image.shape[:2]
    factor = min(target_h / height, target_w / width)
    new_h, new_w = round(height * factor), round(width * factor)
    pad_h, pad_w = (target_h - new_h) / 2, (target_w - new_w) / 2
    # An odd margin puts the extra pixel at the bottom and right, as PaddleDetection's rounding does.
    top, bottom = round(pad_h - 0.1), round(pad_h + 0.1)
    left, right = round(pad_w - 0.1), round(pad_w + 0.1)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    bordered = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT,
                                  value=(LETTERBOX_GREY,) * 3)
    return bordered, factor, (new_h, new_w)


def _to_network_order(image: np.ndarray, channel_order: str) -> np.ndarray:
    return (image[..., ::-1] if channel_order == "RGB" else image).astype(np.float32)


def _pad_stride(data: np.ndarray, stride: int) -> np.ndarray:
    if stride <= 0:
        return data
    height, width = data.shape[:2]
    padded_h = int(np.ceil(height / stride) * stride)
    padded_w = int(np.ceil(width / stride) * stride)
    if (padded_h, padded_w) == (height, width):
        return data
    out = np.zeros((padded_h, padded_w, 3), np.float32)
    out[:height, :width] = data
    return out


def _pad(data: np.ndarray, params: Mapping) -> np.ndarray:
    size = params["size"]
    canvas_h, canvas_w = (size, size) if isinstance(size, int) else size
    height, width = data.shape[:2]
    if height > canvas_h or width > canvas_w:
        raise PreprocessError(f"Pad size {canvas_h}x{canvas_w} is smaller than the resized image {height}x{width}")
    out = np.empty((canvas_h, canvas_w, 3), np.float32)
    out[...] = np.asarray(params.get("fill_value", (114.0, 114.0, 114.0)), np.float32)
    out[:height, :width] = data
    return out
