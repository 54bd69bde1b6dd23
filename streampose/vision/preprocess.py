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
reversed unless the config says `channel_order: BGR`. Resize works per channel and
rounds to uint8 as PaddleDetection's does, so it runs first, on the uint8 BGR frame;
normalization and padding then run on the network tensor itself (ImagePreprocessor).

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


@dataclass(frozen=True)
class ImageInput:
    """What a network takes from an ImageBatch.

    name:       its image input (N, 3, H, W).
    size:       (H, W) of that input; None where a side is dynamic.
    batch_info: which of im_shape and scale_factor it also takes (inputs of those names).
    """

    name: str
    size: tuple[int | None, int | None]
    batch_info: tuple[str, ...]


def image_input(folder, engine, error: type[ValueError]) -> ImageInput:
    """The network's one image input (N, 3, H, W), and its im_shape / scale_factor inputs.
    Raises `error` unless there is exactly one image input, or if its size disagrees with
    what the folder's infer_cfg.yml pre-processes to."""
    images = [t for t in engine.inputs if len(t.shape) == 4]
    if len(images) != 1:
        raise error(f"model {folder.name}: expected one image input (N, 3, H, W), got "
                    f"{[(t.name, list(t.shape)) for t in engine.inputs]}")
    size = tuple(d if d > 0 else None for d in images[0].shape[2:])
    expected = folder.config.input_size
    if expected is not None and None not in size and tuple(expected) != size:
        raise error(f"model {folder.name}: {folder.config.source} pre-processes to {expected[0]}x{expected[1]} "
                    f"(height x width) but the network input is {size[0]}x{size[1]}")
    batch_info = tuple(t.name for t in engine.inputs if t.name in ("im_shape", "scale_factor"))
    return ImageInput(images[0].name, size, batch_info)


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

    def feed(self, network: ImageInput) -> dict[str, np.ndarray]:
        """The engine feed of a network with these inputs."""
        info = {"im_shape": self.im_shape, "scale_factor": self.scale_factor}
        return {network.name: self.tensor, **{name: info[name] for name in network.batch_info}}


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


@dataclass(frozen=True)
class Normalization:
    """NormalizeImage ops as one multiply-add per channel, x * gain + offset, in network channel
    order; gain and offset (3,) float32."""

    gain: np.ndarray
    offset: np.ndarray

    @classmethod
    def of_op(cls, params: Mapping) -> Normalization:
        """One NormalizeImage op: float32, optionally / 255 (is_scale), then (x - mean) / std."""
        if params.get("norm_type", "mean_std") == "none":
            gain, offset = np.ones(3), np.zeros(3)
        else:
            mean = np.asarray(params["mean"], np.float64)
            std = np.asarray(params["std"], np.float64)
            gain, offset = 1.0 / std, -mean / std
        if params.get("is_scale", True):
            gain = gain / 255.0
        return cls(gain.astype(np.float32), offset.astype(np.float32))

    def then(self, later: Normalization) -> Normalization:
        """This normalization followed by `later`, as one."""
        return Normalization(self.gain * later.gain, later(self.offset))

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """(3,) values per channel -> normalized, in float32 as the image is."""
        return np.asarray(values, np.float32) * self.gain + self.offset

    def apply_inplace(self, planes: np.ndarray) -> None:
        """Normalize (..., 3, H, W) float32 planes in place."""
        planes *= self.gain[:, None, None]
        planes += self.offset[:, None, None]


def normalize_crops(crops: np.ndarray, ops: Sequence[PreprocessOp], channel_order: str) -> np.ndarray:
    """(N, H, W, 3) uint8 BGR crops -> (N, 3, H, W) float32 network input.

    `ops` may only normalize and permute (CROP_OPS): the crop was the geometric step.
    """
    check_ops(ops, CROP_OPS, "top-down crop")
    normalization = None
    for op in ops:
        if op.type == "NormalizeImage":
            step = Normalization.of_op(op.params)
            normalization = step if normalization is None else normalization.then(step)
    tensor = np.empty((crops.shape[0], 3, *crops.shape[1:3]), np.float32)
    for planes, crop in zip(tensor, crops):
        _write_planes(planes, crop, channel_order == "RGB")
    if normalization is not None:
        normalization.apply_inplace(tensor)
    return tensor


@dataclass(frozen=True)
class _Padding:
    """A PadStride (stride > 0: height and width up to a multiple of it) or a Pad (size:
    a fixed (height, width) canvas); fill: (3,) float32, the new pixels' network values."""

    fill: np.ndarray
    stride: int = 0
    size: tuple[int, int] | None = None

    def extent(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after this padding of a (height, width) image."""
        if self.size is not None:
            if height > self.size[0] or width > self.size[1]:
                raise PreprocessError(f"Pad size {self.size[0]}x{self.size[1]} is smaller than the resized image "
                                      f"{height}x{width}")
            return self.size
        if self.stride <= 0:
            return height, width
        return -(-height // self.stride) * self.stride, -(-width // self.stride) * self.stride


class ImagePreprocessor:
    """infer_cfg ops for whole frames (IMAGE_OPS or LETTERBOX_OPS), worked out once.

    The geometric ops (Resize, LetterBoxResize) run on the uint8 frame; its planes then go
    straight into the network tensor, where all NormalizeImage ops run as one multiply-add
    and each padding fills its new pixels with its value already normalized by the ops
    after it (as if padded, then normalized).

    input_size: the network's (height, width); None for a dynamic dimension, which then
    takes the largest image of the batch.
    """

    def __init__(self, ops: Sequence[PreprocessOp], channel_order: str,
                 input_size: tuple[int | None, int | None], source: str = "pre-processing"):
        self.input_size = input_size
        self.reverse_channels = channel_order == "RGB"
        self.geometry: list[PreprocessOp] = []
        self.normalization: Normalization | None = None
        self.paddings: list[_Padding] = []
        for op in ops:
            if op.type in ("Resize", "LetterBoxResize"):
                if self.normalization is not None or self.paddings:
                    raise PreprocessError(f"{source}: {op.type} after NormalizeImage, Pad or PadStride is not "
                                          "supported (frames are resized before they are normalized)")
                self.geometry.append(op)
            elif op.type == "NormalizeImage":
                step = Normalization.of_op(op.params)
                self.normalization = step if self.normalization is None else self.normalization.then(step)
                self.paddings = [_Padding(step(p.fill), p.stride, p.size) for p in self.paddings]
            elif op.type == "PadStride":
                self.paddings.append(_Padding(np.zeros(3, np.float32), stride=op.params["stride"]))
            elif op.type == "Pad":
                size = op.params["size"]
                self.paddings.append(_Padding(np.asarray(op.params.get("fill_value", (114.0, 114.0, 114.0)),
                                                         np.float32),
                                              size=(size, size) if isinstance(size, int) else tuple(size)))
            elif op.type != "Permute":
                raise PreprocessError(f"{source}: pre-processing op {op.type} is not supported for whole images "
                                      f"(supported: {', '.join(sorted(IMAGE_OPS | LETTERBOX_OPS))})")

    def prepare(self, images: Sequence[np.ndarray]) -> ImageBatch:
        """BGR uint8 `images` -> the network input, each image at the top-left of the canvas
        with zeros after it."""
        resized = [self._resize(image) for image in images]
        extents = []
        for data, _, _ in resized:
            steps = [data.shape[:2]]
            for padding in self.paddings:
                steps.append(padding.extent(*steps[-1]))
            extents.append(steps)
        heights = [steps[-1][0] for steps in extents]
        widths = [steps[-1][1] for steps in extents]
        canvas_h = self.input_size[0] or max(heights)
        canvas_w = self.input_size[1] or max(widths)
        if max(heights) > canvas_h or max(widths) > canvas_w:
            raise PreprocessError(
                f"pre-processing produced {max(heights)}x{max(widths)} (height x width) images but the network "
                f"input is {canvas_h}x{canvas_w}; the Resize/Pad sizes in infer_cfg.yml do not match the network")
        tensor = np.empty((len(images), 3, canvas_h, canvas_w), np.float32)
        zero = np.zeros(3, np.float32)
        for planes, (data, _, _), steps in zip(tensor, resized, extents):
            height, width = steps[0]
            region = planes[:, :height, :width]
            _write_planes(region, data, self.reverse_channels)
            if self.normalization is not None:
                self.normalization.apply_inplace(region)
            for padding, inner, outer in zip(self.paddings, steps, steps[1:]):
                _fill_around(planes, inner, outer, padding.fill)
            _fill_around(planes, steps[-1], (canvas_h, canvas_w), zero)
        return ImageBatch(
            tensor=tensor,
            scale_factor=np.array([r[1] for r in resized], np.float32).reshape(-1, 2),
            im_shape=np.array([r[2] for r in resized], np.float32).reshape(-1, 2),
        )

    def _resize(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
        """The geometric ops on one image: (HWC uint8 BGR, (fy, fx), resized (h, w) without borders)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise PreprocessError(f"expected an (H, W, 3) uint8 BGR image, got {image.shape} {image.dtype}")
        scale = (1.0, 1.0)
        data = image
        resized = image.shape[:2]
        for op in self.geometry:
            if op.type == "Resize":
                fy, fx = resize_factors(data.shape[0], data.shape[1], op.params)
                data = cv2.resize(data, None, None, fx=fx, fy=fy, interpolation=op.params.get("interp", 1))
                scale = (scale[0] * fy, scale[1] * fx)
                resized = data.shape[:2]
            else:
                data, factor, resized = letterbox(data, op.params["target_size"])
                scale = (scale[0] * factor, scale[1] * factor)
        return data, scale, resized


def prepare_images(images: Sequence[np.ndarray], ops: Sequence[PreprocessOp], channel_order: str,
                   input_size: tuple[int | None, int | None]) -> ImageBatch:
    """Run infer_cfg `ops` on BGR uint8 `images` and stack them on one canvas (see
    ImagePreprocessor, which callers running many batches build once)."""
    return ImagePreprocessor(ops, channel_order, input_size).prepare(images)


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


def _write_planes(planes: np.ndarray, image: np.ndarray, reverse_channels: bool) -> None:
    """(H, W, 3) uint8 -> (3, H, W) float32 `planes`, channels reversed if asked. Split first,
    convert after, on contiguous memory: faster than converting the interleaved image."""
    split = cv2.split(image)
    for channel, plane in enumerate(split[::-1] if reverse_channels else split):
        planes[channel] = plane


def _fill_around(planes: np.ndarray, inner: tuple[int, int], outer: tuple[int, int], value: np.ndarray) -> None:
    """Fill (3, H, W) `planes` within the top-left `outer` (height, width) but outside the
    top-left `inner` with the per-channel `value`."""
    (inner_h, inner_w), (outer_h, outer_w) = inner, outer
    planes[:, :outer_h, inner_w:outer_w] = value[:, None, None]
    planes[:, inner_h:outer_h, :inner_w] = value[:, None, None]
