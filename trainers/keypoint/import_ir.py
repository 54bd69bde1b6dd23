"""Trained PP-TinyPose weights from an OpenVINO IR export into `tinypose_net.TinyPose`.

The IR (PaddleDetection export -> OpenVINO) has every batch norm folded into the conv before it:
conv weights W' = W * gamma / sqrt(var + eps) and one added shift per channel, the Add node
named after the Paddle batch norm's parameter `batch_norm2d_<k>.w_1`. k is the batch norm's
construction index, and TinyPose builds its batch norms in PaddleDetection's order, so the k-th
BatchNorm2D of the network (and the conv feeding it) receives the k-th folded pair. The one conv
without a batch norm (the heatmap conv, weight `conv2d_<n>.w_0`, bias Add) is `final_conv`.

Unfolding: the conv takes W'; its batch norm is given statistics (mean m, variance v) and
gamma = sqrt(v + eps), beta = shift + m, so that in eval mode it adds exactly the shift
whatever m and v are. Without calibration m = 0, v = 1. With calibration crops, m and v are the
batch norm's actual input statistics on those crops, so that training-mode batch norm (batch
statistics) starts out doing what the trained network did (the original gamma is then
|gamma| ~ sqrt(v + eps)); fine-tuning needs that, eval output does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov
import paddle
from paddle import nn

CONV_TYPES = ("Convolution", "GroupConvolution")
FOLDED_NORM = re.compile(r"batch_norm2d_(\d+)\.w_1$")
# Weights are read through these element-wise converters (FP16 storage -> f32 compute).
PASS_THROUGH = ("Convert",)


class IrImportError(ValueError):
    """The IR does not hold a TinyPose this network can take."""


@dataclass(frozen=True)
class ImportReport:
    ir_input_shape: tuple[int, ...]   # (N, 3, H, W) of the IR's image input
    convs: int                        # conv layers given weights (= every Conv2D of the network)
    batch_norms: int                  # folded batch norms unfolded into BatchNorm2D layers
    weight_dtype: str                 # storage type of the IR's weights (e.g. "f16")
    calibration_crops: int            # crops the batch-norm statistics were measured on (0: none)


@dataclass(frozen=True)
class _FoldedConv:
    weight: np.ndarray      # conv weight, Paddle layout (out, in / groups, kh, kw), float32
    shift: np.ndarray       # (out,) added after the conv: folded batch norm or conv bias
    norm_index: int | None  # construction index of the folded batch norm; None: a plain biased conv


def load_ir_weights(net: nn.Layer, xml_path: str | Path,
                    calibration_crops: np.ndarray | None = None) -> ImportReport:
    """Copy the trained weights of the TinyPose IR at xml_path (beside its .bin) into `net`
    (a `build_tinypose` network with the IR's number of joints; any input size).

    calibration_crops: optional (N, 3, H, W) float32 network inputs (normalised person crops)
    on which to measure batch-norm statistics; see the module docstring. Eval output is the
    IR's either way. The net is left in eval mode.
    """
    xml_path = Path(xml_path)
    if not xml_path.is_file() or not xml_path.with_suffix(".bin").is_file():
        raise IrImportError(f"{xml_path}: need an OpenVINO IR .xml with its .bin beside it")
    model = ov.Core().read_model(str(xml_path))
    folded = [_read_conv(op, xml_path) for op in model.get_ordered_ops() if op.get_type_name() in CONV_TYPES]
    by_norm = {f.norm_index: f for f in folded if f.norm_index is not None}
    plain = [f for f in folded if f.norm_index is None]

    pairs = conv_norm_pairs(net)
    if sorted(by_norm) != list(range(len(pairs))) or len(plain) != 1:
        raise IrImportError(f"{xml_path}: expected batch norms batch_norm2d_0..{len(pairs) - 1} and one biased "
                            f"conv (a TinyPose export), found {len(by_norm)} folded batch norms "
                            f"(indices {min(by_norm, default=None)}..{max(by_norm, default=None)}) and "
                            f"{len(plain)} biased convs")
    for index, (conv, norm) in enumerate(pairs):
        _set(conv.weight, by_norm[index].weight, f"{xml_path} batch_norm2d_{index}'s conv")
        _set(norm.weight, np.ones(norm.weight.shape, np.float32) * np.sqrt(1 + norm._epsilon, dtype=np.float32),
             f"batch_norm2d_{index}")
        _set(norm.bias, by_norm[index].shift, f"{xml_path} batch_norm2d_{index} shift")
        _set(norm._mean, np.zeros(norm._mean.shape, np.float32), f"batch_norm2d_{index} mean")
        _set(norm._variance, np.ones(norm._variance.shape, np.float32), f"batch_norm2d_{index} variance")
    _set(net.final_conv.weight, plain[0].weight, f"{xml_path} heatmap conv")
    _set(net.final_conv.bias, plain[0].shift, f"{xml_path} heatmap conv bias")

    net.eval()
    if calibration_crops is not None:
        calibrate_batch_norms(net, calibration_crops)
    image = model.inputs[0].get_partial_shape()
    return ImportReport(
        ir_input_shape=tuple(d.get_length() if d.is_static else -1 for d in image),
        convs=len(pairs) + 1,
        batch_norms=len(pairs),
        weight_dtype=_storage_type(model),
        calibration_crops=0 if calibration_crops is None else len(calibration_crops),
    )


def conv_norm_pairs(net: nn.Layer) -> list[tuple[nn.Conv2D, nn.BatchNorm2D]]:
    """Every BatchNorm2D of the net in construction order, with the conv that feeds it (in
    TinyPose the conv registered last before it), and a check that no conv is left over."""
    pairs, last_conv, convs = [], None, []
    for layer in net.sublayers():
        if isinstance(layer, nn.Conv2D):
            last_conv = layer
            convs.append(layer)
        elif isinstance(layer, nn.BatchNorm2D):
            if last_conv is None or last_conv.weight.shape[0] != layer.weight.shape[0]:
                raise IrImportError(f"batch norm #{len(pairs)} of {type(net).__name__} follows no conv of its width")
            pairs.append((last_conv, layer))
            last_conv = None
    if len(convs) != len(pairs) + 1 or not hasattr(net, "final_conv"):
        raise IrImportError(f"{type(net).__name__} is not a TinyPose: {len(convs)} convs for {len(pairs)} batch norms")
    return pairs


def calibrate_batch_norms(net: nn.Layer, crops: np.ndarray) -> None:
    """Re-parametrise every batch norm so its running statistics are its input's on `crops`
    ((N, 3, H, W) float32), leaving eval output unchanged. Leaves the net in eval mode."""
    crops = np.asarray(crops, np.float32)
    if crops.ndim != 4 or crops.shape[1] != 3 or len(crops) < 1:
        raise ValueError(f"calibration crops must be (N, 3, H, W) float32, got shape {crops.shape}")
    norms = [norm for _, norm in conv_norm_pairs(net)]
    stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def record(layer, inputs):
        x = inputs[0]
        mean = paddle.mean(x, axis=[0, 2, 3], keepdim=True)
        # Biased variance, as training-mode batch norm normalises with.
        stats[id(layer)] = (mean.flatten().numpy(), paddle.mean(paddle.square(x - mean), axis=[0, 2, 3]).numpy())

    handles = [norm.register_forward_pre_hook(record) for norm in norms]
    try:
        net.eval()
        with paddle.no_grad():
            net(paddle.to_tensor(crops))
    finally:
        for handle in handles:
            handle.remove()
    for norm in norms:
        mean, var = stats[id(norm)]
        gamma, beta = norm.weight.numpy(), norm.bias.numpy()
        # Current eval map: y = gamma * (x - m0) / sqrt(v0 + eps) + beta = a * x + b; keep a and b.
        scale = gamma / np.sqrt(norm._variance.numpy() + norm._epsilon)
        offset = beta - scale * norm._mean.numpy()
        new_gamma = scale * np.sqrt(var + norm._epsilon)
        norm.weight.set_value(new_gamma.astype(np.float32))
        norm.bias.set_value((offset + scale * mean).astype(np.float32))
        norm._mean.set_value(mean.astype(np.float32))
        norm._variance.set_value(var.astype(np.float32))


def _read_conv(op, xml_path: Path) -> _FoldedConv:
    weight = _constant(op.input(1).get_source_output(), xml_path, op)
    if op.get_type_name() == "GroupConvolution":  # (groups, out/groups, in/groups, kh, kw)
        weight = weight.reshape(weight.shape[0] * weight.shape[1], *weight.shape[2:])
    consumers = [target.get_node() for target in op.output(0).get_target_inputs()]
    if len(consumers) != 1 or consumers[0].get_type_name() != "Add":
        raise IrImportError(f"{xml_path}: conv {op.get_friendly_name()} is not followed by exactly one Add "
                            f"(batch norm shift or bias), but by {[c.get_type_name() for c in consumers]}")
    add = consumers[0]
    other = next(port.get_source_output() for port in add.inputs() if port.get_source_output().get_node() != op)
    shift = _constant(other, xml_path, add).reshape(-1)
    if shift.size != weight.shape[0]:
        raise IrImportError(f"{xml_path}: Add {add.get_friendly_name()} has {shift.size} values for "
                            f"{weight.shape[0]} conv outputs")
    match = FOLDED_NORM.search(add.get_friendly_name())
    return _FoldedConv(weight, shift, int(match.group(1)) if match else None)


def _constant(output, xml_path: Path, user) -> np.ndarray:
    node = output.get_node()
    while node.get_type_name() in PASS_THROUGH:
        node = node.input(0).get_source_output().get_node()
    if node.get_type_name() != "Constant":
        raise IrImportError(f"{xml_path}: input of {user.get_friendly_name()} is computed by a "
                            f"{node.get_type_name()}, not stored as a constant")
    return np.asarray(node.get_data(), np.float32)


def _storage_type(model) -> str:
    types = {op.get_output_element_type(0).get_type_name() for op in model.get_ops()
             if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) == 4}
    return "+".join(sorted(types))


def _set(param, value: np.ndarray, what: str) -> None:
    value = np.asarray(value, np.float32)
    if tuple(param.shape) != value.shape:
        raise IrImportError(f"{what}: IR shape {value.shape} does not fit the network's {tuple(param.shape)}")
    param.set_value(value)
