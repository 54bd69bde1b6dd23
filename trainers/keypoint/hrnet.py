"""HRNet (Sun et al., "Deep High-Resolution Representation Learning for Human Pose Estimation",
2019) as a top-down keypoint network: image (N, 3, H, W) -> heatmaps (N, K, H/4, W/4).

The layout is PaddleDetection's `HRNet` backbone with `return_idx: [0]` under `TopDownHRNet`:
- stem: two 3x3 stride-2 convolutions to 64 channels at 1/4;
- stage 1: four bottlenecks (64 -> 256 channels);
- stages 2, 3, 4: 1, 4 and 3 modules on 2, 3 and 4 parallel branches of width x (1, 2, 4, 8)
  channels at 1/4, 1/8, 1/16, 1/32; each module runs four basic blocks per branch and then
  fuses every branch into every other (1x1 conv + up-sampling from coarser ones, chains of
  3x3 stride-2 convs from finer ones). Before each stage a transition adds the next coarser
  branch (3x3 stride-2 conv of the coarsest) and adapts widths that change;
- the last module fuses into the 1/4 branch only, and a 1x1 conv turns it into K heatmaps.

Up-sampling in the fuse layers is nearest-neighbour to the finer branch's explicit size:
paddle2onnx converts that, while it cannot convert a scale factor.
"""

from __future__ import annotations

import paddle.nn.functional as F
from paddle import nn

STEM_CHANNELS = 64
BOTTLENECK_EXPANSION = 4
STAGE1_BLOCKS = 4
BLOCKS_PER_BRANCH = 4
MODULES_PER_STAGE = (1, 4, 3)  # stages 2, 3, 4


class ConvNorm(nn.Sequential):
    """Convolution without bias (the batch norm shifts), batch norm, optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, relu: bool = True):
        # PaddleDetection's HRNet initialisation: N(0, 0.01) convolution weights.
        conv = nn.Conv2D(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2,
                         weight_attr=nn.initializer.Normal(std=0.01), bias_attr=False)
        layers = [conv, nn.BatchNorm2D(out_channels)]
        if relu:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class Bottleneck(nn.Layer):
    """1x1 reduce, 3x3, 1x1 expand x4, plus the input (projected where the width changes)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        out_channels = channels * BOTTLENECK_EXPANSION
        self.body = nn.Sequential(ConvNorm(in_channels, channels, 1), ConvNorm(channels, channels, 3),
                                  ConvNorm(channels, out_channels, 1, relu=False))
        self.shortcut = ConvNorm(in_channels, out_channels, 1, relu=False) if in_channels != out_channels else None

    def forward(self, x):
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.body(x) + shortcut)


class BasicBlock(nn.Layer):
    """Two 3x3 convolutions plus the input (widths never change inside a branch)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(ConvNorm(channels, channels, 3), ConvNorm(channels, channels, 3, relu=False))

    def forward(self, x):
        return F.relu(self.body(x) + x)


class Transition(nn.Layer):
    """From a stage's branches to the next stage's: widths adapted, one coarser branch added."""

    def __init__(self, in_channels: list[int], out_channels: list[int]):
        super().__init__()
        self.adapt = nn.LayerList([
            ConvNorm(c_in, c_out, 3) if c_in != c_out else nn.Identity()
            for c_in, c_out in zip(in_channels, out_channels)])
        self.new_branch = ConvNorm(in_channels[-1], out_channels[-1], 3, stride=2)

    def forward(self, branches: list) -> list:
        return [adapt(x) for adapt, x in zip(self.adapt, branches)] + [self.new_branch(branches[-1])]


class FuseLayers(nn.Layer):
    """Output i = ReLU(sum over branches j of branch j brought to branch i's resolution and width)."""

    def __init__(self, channels: list[int], outputs: int):
        super().__init__()
        self.paths = nn.LayerList()
        for i in range(outputs):
            row = nn.LayerList()
            for j, c_in in enumerate(channels):
                if j > i:  # coarser: 1x1 to the target width, then up-sampled in forward
                    row.append(ConvNorm(c_in, channels[i], 1, relu=False))
                elif j < i:  # finer: i - j stride-2 3x3 convs, ReLU between them but not after the last
                    steps = [ConvNorm(c_in, c_in, 3, stride=2) for _ in range(i - j - 1)]
                    steps.append(ConvNorm(c_in, channels[i], 3, stride=2, relu=False))
                    row.append(nn.Sequential(*steps))
                else:
                    row.append(nn.Identity())
            self.paths.append(row)

    def forward(self, branches: list) -> list:
        fused = []
        for i, row in enumerate(self.paths):
            target = branches[i]
            total = target
            for j, (path, x) in enumerate(zip(row, branches)):
                if j > i:
                    total = total + F.interpolate(path(x), size=target.shape[-2:], mode="nearest")
                elif j < i:
                    total = total + path(x)
            fused.append(F.relu(total))
        return fused


class HighResolutionModule(nn.Layer):
    def __init__(self, channels: list[int], outputs: int):
        super().__init__()
        self.branches = nn.LayerList([
            nn.Sequential(*[BasicBlock(c) for _ in range(BLOCKS_PER_BRANCH)]) for c in channels])
        self.fuse = FuseLayers(channels, outputs)

    def forward(self, branches: list) -> list:
        return self.fuse([branch(x) for branch, x in zip(self.branches, branches)])


class HRNet(nn.Layer):
    def __init__(self, width: int, num_joints: int):
        super().__init__()
        self.stem = nn.Sequential(ConvNorm(3, STEM_CHANNELS, 3, stride=2),
                                  ConvNorm(STEM_CHANNELS, STEM_CHANNELS, 3, stride=2))
        stage1_channels = STEM_CHANNELS * BOTTLENECK_EXPANSION
        self.stage1 = nn.Sequential(*[Bottleneck(STEM_CHANNELS if b == 0 else stage1_channels, STEM_CHANNELS)
                                      for b in range(STAGE1_BLOCKS)])
        previous = [stage1_channels]
        self.transitions, self.stages = nn.LayerList(), nn.LayerList()
        for stage, modules in enumerate(MODULES_PER_STAGE):
            channels = [width * 2 ** b for b in range(stage + 2)]
            self.transitions.append(Transition(previous, channels))
            last_stage = stage == len(MODULES_PER_STAGE) - 1
            self.stages.append(nn.Sequential(*[
                HighResolutionModule(channels, 1 if last_stage and m == modules - 1 else len(channels))
                for m in range(modules)]))
            previous = channels
        self.final_conv = nn.Conv2D(width, num_joints, 1, weight_attr=nn.initializer.Normal(std=0.001),
                                    bias_attr=nn.initializer.Constant(0.0))

    def forward(self, image):
        """image (N, 3, H, W) float32, H and W multiples of 32 -> heatmaps (N, K, H/4, W/4)."""
        branches = [self.stage1(self.stem(image))]
        for transition, stage in zip(self.transitions, self.stages):
            branches = stage(transition(branches))
        return self.final_conv(branches[0])


def build_hrnet(width: int = 32, num_joints: int = 17) -> HRNet:
    """An untrained HRNet-W{width} (32: HRNet-W32, 28.5 M parameters) with num_joints heatmaps."""
    if width < 1:
        raise ValueError(f"HRNet width must be a positive channel count, got {width}")
    return HRNet(width, num_joints)
