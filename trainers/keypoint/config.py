"""Settings of a keypoint training run, read from YAML (trainers/keypoint/configs/*.yml).

The keys follow PaddleDetection's keypoint configs where they have a counterpart (trainsize,
hmsize, num_joints, flip_perm, sigma, joint weights, base_lr with LinearWarmup and
PiecewiseDecay...), so a custom keypoint set is described the same way: list its joint names,
left/right pairs, OKS sigmas and loss weights under `keypoints`. Sizes are [width, height] as
in PaddleDetection's `trainsize`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from streampose.frame import COCO_KEYPOINTS
from streampose.vision.heatmap import COCO_FLIP_PAIRS

# COCO's per-joint OKS sigmas (pycocotools' defaults).
COCO_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
               0.107, 0.107, 0.087, 0.087, 0.089, 0.089)
# HRNet's COCO loss weights: elbows and knees 1.2, wrists and ankles 1.5.
COCO_JOINT_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5)
COCO_UPPER_BODY = tuple(range(11))
# All architectures put heatmaps at 1/4 of the input.
OUTPUT_STRIDE = 4


@dataclass(frozen=True)
class KeypointSet:
    names: tuple[str, ...] = field(default=COCO_KEYPOINTS, metadata={"help": "joint names, in output order"})
    flip_pairs: tuple[tuple[int, int], ...] = field(default=COCO_FLIP_PAIRS, metadata={
        "help": "left/right joint index pairs, swapped when a crop is mirrored"})
    sigmas: tuple[float, ...] = field(default=COCO_SIGMAS, metadata={
        "help": "OKS sigma per joint (COCO: 2 x the annotators' std / object scale)"})
    joint_weights: tuple[float, ...] = field(default=COCO_JOINT_WEIGHTS, metadata={
        "help": "loss weight per joint"})
    upper_body: tuple[int, ...] = field(default=COCO_UPPER_BODY, metadata={
        "help": "joints of the upper body, for the half-body augmentation; the others are the lower body"})

    def __post_init__(self):
        k = len(self.names)
        for name in ("sigmas", "joint_weights"):
            if len(getattr(self, name)) != k:
                raise ValueError(f"keypoints.{name} has {len(getattr(self, name))} values for {k} joint names")
        for pair in self.flip_pairs:
            if not all(0 <= j < k for j in pair) or pair[0] == pair[1]:
                raise ValueError(f"keypoints.flip_pairs: {list(pair)} is not a pair of distinct joints in 0..{k - 1}")
        flat = [j for pair in self.flip_pairs for j in pair]
        if len(set(flat)) != len(flat):
            raise ValueError("keypoints.flip_pairs: a joint appears in more than one pair")
        if not all(0 <= j < k for j in self.upper_body):
            raise ValueError(f"keypoints.upper_body: indices must lie in 0..{k - 1}")
        if any(s <= 0 for s in self.sigmas):
            raise ValueError("keypoints.sigmas must be positive")

    @property
    def num_joints(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["simple_baseline", "tinypose", "hrnet"] = field(default="tinypose", metadata={
        "help": "simple_baseline: backbone + deconvolution head (Xiao et al. 2018); tinypose: PP-TinyPose "
                "(LiteHRNet-18); hrnet: HRNet-W32 (Sun et al. 2019)"})
    backbone: Literal["resnet18", "resnet34", "resnet50", "mobilenet_v2"] = field(default="resnet18", metadata={
        "help": "simple_baseline: the backbone (paddle.vision.models)"})
    backbone_scale: float = field(default=1.0, metadata={"help": "mobilenet_v2: channel width multiplier"})
    deconv_channels: int = field(default=256, metadata={"help": "simple_baseline: channels of each deconvolution"})
    freeze_norm: bool = field(default=False, metadata={
        "help": "batch norms keep their running statistics while training (their scale and shift still "
                "learn): for fine-tuning with small batches, whose own statistics are noisy"})
    init: Path | None = field(default=None, metadata={
        "help": "starting weights: null (random), an OpenVINO IR model.xml of a TinyPose export (tinypose "
                "only), or a .pdparams state dict / .pdckpt checkpoint of the same network"})

    def builder_kwargs(self, input_size: tuple[int, int], num_joints: int) -> dict:
        """Arguments of trainers.keypoint.models:build_network for this model (JSON-compatible)."""
        return {"arch": self.arch, "backbone": self.backbone, "backbone_scale": self.backbone_scale,
                "deconv_channels": self.deconv_channels, "input_size": list(input_size), "num_joints": num_joints}


@dataclass(frozen=True)
class DataConfig:
    train_annotations: Path = field(metadata={"help": "COCO keypoint JSON of the training set"})
    train_images: Path = field(metadata={"help": "folder the training JSON's file_name entries are relative to"})
    val_annotations: Path = field(metadata={"help": "COCO keypoint JSON of the held-out set"})
    val_images: Path = field(metadata={"help": "folder of the held-out images"})
    expand_ratio: float = field(default=0.3, metadata={
        "help": "box growth before cropping, as the keypoints stage's expand_ratio (keep them equal)"})
    min_keypoints: int = field(default=1, metadata={"help": "persons with fewer labelled joints are not used"})
    image_cache: int = field(default=64, metadata={"help": "decoded images kept in memory per loader process"})
    workers: int = field(default=0, metadata={"help": "data loader processes (0: in the training process)"})


@dataclass(frozen=True)
class AugmentConfig:
    flip: float = field(default=0.5, metadata={"help": "probability of mirroring a crop (joints swap by flip_pairs)"})
    half_body: float = field(default=0.3, metadata={"help": "probability of cropping to the upper or lower body"})
    half_body_min_joints: int = field(default=8, metadata={"help": "labelled joints a person needs for half-body"})
    scale: float = field(default=0.25, metadata={"help": "crop size varies by up to this fraction either way"})
    rotate_deg: float = field(default=30.0, metadata={"help": "largest rotation, degrees"})
    rotate_prob: float = field(default=0.6, metadata={"help": "probability of rotating"})
    colour: float = field(default=0.2, metadata={"help": "largest relative change of brightness, contrast and "
                                                         "saturation (0: off)"})


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = field(default=20, metadata={"help": "passes over the training persons"})
    batch_size: int = field(default=32, metadata={"help": "crops per step"})
    optimizer: Literal["adam", "adamw"] = field(default="adam", metadata={"help": "Adam or AdamW"})
    base_lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW's decoupled weight decay"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps from warmup_start_factor"})
    warmup_start_factor: float = field(default=0.001, metadata={"help": "learning rate at step 0 / base_lr"})
    decay: Literal["cosine", "step"] = field(default="cosine", metadata={
        "help": "after warm-up: cosine to 0 at the last step, or x gamma at each milestone"})
    milestones: tuple[int, ...] = field(default=(), metadata={"help": "step decay: epochs at which lr *= gamma"})
    gamma: float = field(default=0.1, metadata={"help": "step decay factor"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA of the weights (0: off); evaluated and exported"})
    amp: bool = field(default=True, metadata={"help": "mixed precision (float16) on a GPU; ignored on the CPU"})
    eval_every: int = field(default=1, metadata={"help": "epochs between validations (and checkpoints)"})
    log_every: int = field(default=10, metadata={"help": "steps between log records"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps in all (0: run every epoch)"})
    seed: int = field(default=0, metadata={"help": "random seed of initialisation and augmentation"})


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    input_size: tuple[int, int] = field(default=(96, 128), metadata={"help": "network input [width, height]"})
    heatmap_size: tuple[int, int] = field(default=(24, 32), metadata={"help": "heatmap [width, height]"})
    sigma: float = field(default=1.0, metadata={
        "help": "target Gaussian's standard deviation, heatmap pixels (PaddleDetection: 1 at 24x32, 2 at 48x64)"})
    keypoints: KeypointSet = field(default_factory=KeypointSet)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    use_dark: bool = field(default=True, metadata={"help": "validation decodes with DARK, as the keypoints stage"})
    flip_test: bool = field(default=False, metadata={"help": "validation averages mirrored crops, as the stage's "
                                                             "flip_test"})

    def __post_init__(self):
        width, height = self.input_size
        if (width, height) != (self.heatmap_size[0] * OUTPUT_STRIDE, self.heatmap_size[1] * OUTPUT_STRIDE):
            raise ValueError(f"heatmap_size {list(self.heatmap_size)} must be input_size {list(self.input_size)} "
                             f"/ {OUTPUT_STRIDE} (the networks' output stride)")
        if width % 32 or height % 32:
            raise ValueError(f"input_size {list(self.input_size)}: width and height must be multiples of 32")
        if self.sigma <= 0:
            raise ValueError("sigma must be positive")
        if self.flip_test and self.keypoints.names != COCO_KEYPOINTS:
            raise ValueError("flip_test: the keypoints stage mirrors crops with the COCO joints' flip pairs, which "
                             "do not fit a custom keypoint set; leave flip_test off")

    @property
    def infer_cfg(self) -> dict:
        """infer_cfg.yml as PaddleDetection's exporter writes it for a top-down keypoint model."""
        return {
            "mode": "paddle",
            "draw_threshold": 0.5,
            "metric": "KeyPointTopDownCOCOEval",
            "use_dynamic_shape": False,
            "arch": "HRNet",
            "min_subgraph_size": 3,
            "Preprocess": [
                {"trainsize": list(self.input_size), "type": "TopDownEvalAffine"},
                {"is_scale": True, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "type": "NormalizeImage"},
                {"type": "Permute"},
            ],
            "label_list": ["keypoint"],
        }
