"""infer_cfg.yml: the pre-processing, labels and post-processing settings exported beside a network.

The file is PaddleDetection's deploy config (written by `tools/export_model.py`). It is parsed
with `yaml.safe_load` and validated here, so a malformed file or an op streampose cannot run
fails at load time with the file and key named, not later inside a stage.

One key is a streampose extension: `channel_order` ("RGB", the PaddleDetection convention and
the default, or "BGR" for networks such as the original YOLOX ONNX export).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streampose.yaml_file import read_yaml

log = logging.getLogger(__name__)

# YOLO: what PaddleDetection's exporter writes for PP-YOLOE / PP-YOLOE+ (and YOLOv3): boxes with
# scores, or NMS in the network, as PicoDet's post-processed forms (streampose.vision.picodet).
DETECTOR_ARCHS = frozenset({"PicoDet", "GFL", "YOLOX", "YOLO"})
KEYPOINT_ARCHS = frozenset({"HRNet"})
# 2D->3D pose lifters (trainers/lifter): no image pre-processing, so Preprocess may be empty.
LIFTER_ARCHS = frozenset({"PoseLifter"})
# Joint detection-embedding trackers: boxes and appearance embeddings from one network, with
# the association settings in the file's `tracker` section (streampose.tracking.jde).
JDE_ARCHS = frozenset({"FairMOT", "JDE"})
KNOWN_ARCHS = DETECTOR_ARCHS | KEYPOINT_ARCHS | LIFTER_ARCHS | JDE_ARCHS


class InferConfigError(ValueError):
    """infer_cfg.yml is missing, malformed or asks for something streampose cannot do."""


def _pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)


def _int_or_pair(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value > 0) or _pair(value)


def _triple(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _nonzero_triple(value: Any) -> bool:
    return _triple(value) and all(v != 0 for v in value)


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# Each op: key -> (required, check, what the check expects). Keys not listed are an error.
_OP_KEYS: dict[str, dict[str, tuple[bool, Any, str]]] = {
    "Resize": {
        "target_size": (True, _pair, "[height, width], positive integers"),
        "keep_ratio": (False, _bool, "true or false"),
        "interp": (False, lambda v: v in (0, 1, 2, 3, 4), "an OpenCV interpolation code 0-4"),
    },
    "LetterBoxResize": {"target_size": (True, _int_or_pair, "a positive integer or [height, width]")},
    "NormalizeImage": {
        "mean": (True, _triple, "3 numbers"),
        "std": (True, _nonzero_triple, "3 non-zero numbers"),
        "is_scale": (False, _bool, "true or false"),
        "norm_type": (False, lambda v: v in ("mean_std", "none"), "mean_std or none"),
    },
    "Permute": {},
    "PadStride": {"stride": (True, _non_negative_int, "an integer >= 0")},
    "Pad": {
        "size": (True, _int_or_pair, "a positive integer or [height, width]"),
        "fill_value": (False, _triple, "3 numbers"),
    },
    "TopDownEvalAffine": {
        "trainsize": (True, _pair, "[width, height], positive integers"),
        "use_udp": (False, _bool, "true or false"),
    },
}
KNOWN_OPS = frozenset(_OP_KEYS)


@dataclass(frozen=True)
class PreprocessOp:
    """One pre-processing step, as in PaddleDetection's deploy/python/preprocess.py.

    type:   op name (one of KNOWN_OPS).
    params: its keys from the file (validated), e.g. Resize {"target_size": [h, w], ...}.
    """

    type: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class InferConfig:
    """A validated infer_cfg.yml.

    source:        the file it came from, or a note such as "built-in (zoo.yml: yolox_nano_coco_onnx)".
    arch:          network family (KNOWN_ARCHS); selects post-processing.
    preprocess:    ops in order.
    label_list:    class names as the file lists them (see `labels_for`).
    nms:           the NMS block (keys score_threshold, nms_threshold, keep_top_k, nms_top_k...) or None.
    fpn_stride:    strides of the head levels (PicoDet/GFL), or None.
    tracker:       the tracker block, or None.
    draw_threshold: score above which boxes are drawn.
    min_subgraph_size: smallest subgraph handed to TensorRT.
    channel_order: "RGB" or "BGR": the channel order the network expects.
    raw:           the whole parsed mapping.
    """

    source: str
    arch: str
    preprocess: tuple[PreprocessOp, ...]
    label_list: tuple[str, ...]
    nms: Mapping[str, Any] | None = None
    fpn_stride: tuple[int, ...] | None = None
    tracker: Mapping[str, Any] | None = None
    draw_threshold: float = 0.5
    min_subgraph_size: int = 3
    channel_order: str = "RGB"
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def task(self) -> str:
        """"detector", "keypoints", "lifter" or "jde"."""
        if self.arch in LIFTER_ARCHS:
            return "lifter"
        if self.arch in JDE_ARCHS:
            return "jde"
        return "keypoints" if self.arch in KEYPOINT_ARCHS else "detector"

    @property
    def input_size(self) -> tuple[int, int] | None:
        """Network input (height, width) the pre-processing produces, or None when it varies."""
        for op in self.preprocess:
            if op.type == "TopDownEvalAffine":
                width, height = op.params["trainsize"]
                return height, width
            if op.type in ("Pad", "LetterBoxResize"):
                size = op.params["size" if op.type == "Pad" else "target_size"]
                return (size, size) if isinstance(size, int) else tuple(size)
        for op in self.preprocess:
            if op.type == "Resize" and not op.params.get("keep_ratio", True):
                return tuple(op.params["target_size"])
        return None

    def op(self, op_type: str) -> PreprocessOp | None:
        """The first op of this type, or None."""
        return next((op for op in self.preprocess if op.type == op_type), None)

    def labels_for(self, num_classes: int) -> tuple[str, ...]:
        """Class names for a network with `num_classes` outputs; the network is the truth.

        Exports sometimes keep the training set's full list (picodet_s_192_pedestrian lists 80
        COCO names for a 1-class head): extra names are dropped, missing ones become "class_N",
        with a warning.
        """
        labels = self.label_list
        if len(labels) == num_classes:
            return labels
        log.warning("%s lists %d labels but the network has %d class(es); using the network's count",
                    self.source, len(labels), num_classes)
        return labels[:num_classes] + tuple(f"class_{i}" for i in range(len(labels), num_classes))


def load_infer_cfg(path: str | Path) -> InferConfig:
    """Read and validate an infer_cfg.yml. Raises InferConfigError naming the file and key."""
    return parse_infer_cfg(read_yaml(Path(path), "file", InferConfigError), str(path))


def parse_infer_cfg(data: Any, source: str) -> InferConfig:
    """Validate an already parsed infer_cfg mapping; `source` names it in errors."""

    def fail(key: str, problem: str) -> InferConfigError:
        return InferConfigError(f"{source}: key '{key}': {problem}")

    if not isinstance(data, dict):
        raise InferConfigError(f"{source}: expected a mapping of keys (arch, Preprocess, label_list...), "
                               f"got {type(data).__name__}")
    arch = data.get("arch")
    if arch is None:
        raise fail("arch", "missing")
    if arch not in KNOWN_ARCHS:
        raise fail("arch", f"unsupported architecture {arch!r}; supported: {', '.join(sorted(KNOWN_ARCHS))}")

    ops_data = data.get("Preprocess", [] if arch in LIFTER_ARCHS else None)
    if not isinstance(ops_data, list) or (not ops_data and arch not in LIFTER_ARCHS):
        raise fail("Preprocess", "missing or not a non-empty list of ops")
    ops = tuple(_parse_op(i, op, fail) for i, op in enumerate(ops_data))

    labels = data.get("label_list")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, (str, int)) for x in labels):
        raise fail("label_list", "missing or not a non-empty list of names")

    nms = data.get("NMS")
    if nms is not None:
        if not isinstance(nms, dict):
            raise fail("NMS", "not a mapping")
        for key in ("score_threshold", "nms_threshold"):
            value = nms.get(key)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise fail(f"NMS.{key}", f"expected a number in [0, 1], got {value!r}")

    strides = data.get("fpn_stride")
    if strides is not None and not (isinstance(strides, list) and strides
                                    and all(isinstance(s, int) and s > 0 for s in strides)):
        raise fail("fpn_stride", f"expected a list of positive integers, got {strides!r}")

    tracker = data.get("tracker")
    if tracker is not None and not isinstance(tracker, dict):
        raise fail("tracker", "not a mapping")

    draw_threshold = data.get("draw_threshold", 0.5)
    if not isinstance(draw_threshold, (int, float)) or not 0 <= draw_threshold <= 1:
        raise fail("draw_threshold", f"expected a number in [0, 1], got {draw_threshold!r}")

    min_subgraph_size = data.get("min_subgraph_size", 3)
    if not _non_negative_int(min_subgraph_size):
        raise fail("min_subgraph_size", f"expected an integer >= 0, got {min_subgraph_size!r}")

    channel_order = data.get("channel_order", "RGB")
    if channel_order not in ("RGB", "BGR"):
        raise fail("channel_order", f"expected RGB or BGR, got {channel_order!r}")

    return InferConfig(
        source=source,
        arch=arch,
        preprocess=ops,
        label_list=tuple(str(x) for x in labels),
        nms=nms,
        fpn_stride=tuple(strides) if strides else None,
        tracker=tracker,
        draw_threshold=float(draw_threshold),
        min_subgraph_size=min_subgraph_size,
        channel_order=channel_order,
        raw=data,
    )


def _parse_op(index: int, op: Any, fail) -> PreprocessOp:
    where = f"Preprocess[{index}]"
    if not isinstance(op, dict) or "type" not in op:
        raise fail(where, f"expected a mapping with a 'type', got {op!r}")
    op_type = op["type"]
    spec = _OP_KEYS.get(op_type)
    if spec is None:
        raise fail(f"{where}.type", f"unknown pre-processing op {op_type!r}; known: {', '.join(sorted(KNOWN_OPS))}")
    params = {k: v for k, v in op.items() if k != "type"}
    for key in params.keys() - spec.keys():
        raise fail(f"{where}.{key}", f"not a parameter of {op_type} (parameters: {', '.join(spec) or 'none'})")
    for key, (required, check, expected) in spec.items():
        if key not in params:
            if required:
                raise fail(f"{where}.{key}", f"{op_type} needs it ({expected})")
            continue
        if not check(params[key]):
            raise fail(f"{where}.{key}", f"expected {expected}, got {params[key]!r}")
    return PreprocessOp(op_type, params)
