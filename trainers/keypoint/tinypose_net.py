"""PP-TinyPose in Paddle: PaddleDetection's TopDownHRNet with the LiteHRNet "wider_naive" backbone.

Image (N, 3, H, W), RGB normalised with ImageNet mean/std -> heatmaps (N, K, H/4, W/4).

    stem        3x3 stride-2 conv, then a ShuffleNet-v2 down-sampling unit: 32 channels at 1/4
    3 stages    2, 4 and 2 HRNet modules with 2, 3 and 4 branches of 40/80/160/320 channels at
                1/4, 1/8, 1/16 and 1/32; each branch is 2 ShuffleNet-v2 units, then every
                branch takes in every other (1x1 conv + nearest up-sampling from coarser ones,
                depthwise 3x3 stride-2 convs from finer ones)
    head        LiteHRNet's IterativeHead (coarse to fine, bilinear up-sampling, depthwise
                separable convs), then a 1x1 conv to K heatmaps

The layer tree and attribute names follow PaddleDetection's `ppdet/modeling/backbones/lite_hrnet.py`
and `architectures/keypoint_hrnet.py`, and its batch norms are built in the same order, which is
how `import_ir` maps the exported network's folded batch norms (named `batch_norm2d_<k>`) back
onto this one. Two quirks of that code are part of the trained model and so are kept: in a
module's fusion every output counts branch 0's term twice, and outputs after the first take
branch 0 after its own fusion (before its ReLU).
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn

STEM_CHANNELS = 32
BRANCH_CHANNELS = (40, 80, 160, 320)   # "wider_naive"
MODULES_PER_STAGE = (2, 4, 2)
UNITS_PER_BRANCH = 2
HEAD_CHANNELS = BRANCH_CHANNELS[0]


class ConvNormLayer(nn.Layer):
    """Conv (no bias) + batch norm + optional ReLU; `padding` keeps the size at stride 1."""

    def __init__(self, ch_in: int, ch_out: int, filter_size: int, stride: int = 1, groups: int = 1,
                 relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2D(ch_in, ch_out, filter_size, stride=stride, padding=(filter_size - 1) // 2,
                              groups=groups, bias_attr=False)
        self.norm = nn.BatchNorm2D(ch_out)
        self.relu = relu

    def forward(self, x):
        x = self.norm(self.conv(x))
        return F.relu(x) if self.relu else x


def _channel_shuffle(x):
    """Interleave the two channel halves. Spelt as reshape/transpose, not F.channel_shuffle,
    which OpenVINO's Paddle reader does not know."""
    _, channels, height, width = x.shape
    x = paddle.transpose(paddle.reshape(x, [0, 2, channels // 2, height, width]), [0, 2, 1, 3, 4])
    return paddle.reshape(x, [0, channels, height, width])


def _depthwise(channels: int, stride: int = 1) -> ConvNormLayer:
    return ConvNormLayer(channels, channels, 3, stride=stride, groups=channels)


def _pointwise(ch_in: int, ch_out: int) -> ConvNormLayer:
    return ConvNormLayer(ch_in, ch_out, 1, relu=True)


class Stem(nn.Layer):
    """3x3 stride-2 conv to 32 channels, then a stride-2 ShuffleNet-v2 unit on its two halves."""

    def __init__(self, channels: int = STEM_CHANNELS):
        super().__init__()
        half = channels // 2
        self.conv1 = ConvNormLayer(3, channels, 3, stride=2, relu=True)
        self.branch1 = nn.Sequential(_depthwise(half, stride=2), _pointwise(half, half))
        self.expand_conv = _pointwise(half, channels)
        self.depthwise_conv = _depthwise(channels, stride=2)
        self.linear_conv = _pointwise(channels, half)

    def forward(self, x):
        x1, x2 = paddle.chunk(self.conv1(x), 2, axis=1)
        x2 = self.linear_conv(self.depthwise_conv(self.expand_conv(x2)))
        return _channel_shuffle(paddle.concat([self.branch1(x1), x2], axis=1))


class ShuffleUnit(nn.Layer):
    """Stride-1 ShuffleNet-v2 unit: half the channels pass, half go 1x1 -> depthwise 3x3 -> 1x1."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch2 = nn.Sequential(_pointwise(half, half), _depthwise(half), _pointwise(half, half))

    def forward(self, x):
        x1, x2 = paddle.chunk(x, 2, axis=1)
        return _channel_shuffle(paddle.concat([x1, self.branch2(x2)], axis=1))


def _conv_bn(ch_in: int, ch_out: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Layer]:
    return [nn.Conv2D(ch_in, ch_out, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups,
                      bias_attr=False),
            nn.BatchNorm2D(ch_out)]


def _downsample(ch_in: int, ch_out: int, relu: bool) -> nn.Sequential:
    """Depthwise 3x3 stride-2 conv + BN, 1x1 conv + BN (+ ReLU): half the size."""
    layers = _conv_bn(ch_in, ch_in, 3, stride=2, groups=ch_in) + _conv_bn(ch_in, ch_out, 1)
    return nn.Sequential(*layers, *([nn.ReLU()] if relu else []))


class NearestUpsample(nn.Layer):
    """Nearest up-sampling by a whole factor, to an explicit output size: paddle2onnx 2.1 cannot
    convert `nn.Upsample(scale_factor=...)` ("the 0th elementwise MUST be ir::FloatAttribute")."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        height, width = x.shape[-2:]
        return F.interpolate(x, size=[height * self.factor, width * self.factor], mode="nearest")


class LiteHRNetModule(nn.Layer):
    """Parallel branches of shuffle units, then every branch fused into every branch."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        self.num_branches = len(channels)
        self.layers = nn.LayerList([nn.Sequential(*(ShuffleUnit(c) for _ in range(UNITS_PER_BRANCH)))
                                    for c in channels])
        self.fuse_layers = nn.LayerList([nn.LayerList([self._fuse_layer(channels, i, j)
                                                       for j in range(self.num_branches)])
                                         for i in range(self.num_branches)])

    @staticmethod
    def _fuse_layer(channels: tuple[int, ...], i: int, j: int) -> nn.Layer | None:
        """Branch j's features brought to branch i's size and width."""
        if j > i:
            return nn.Sequential(*_conv_bn(channels[j], channels[i], 1),
                                 NearestUpsample(2 ** (j - i)))
        if j == i:
            return None
        steps = i - j
        return nn.Sequential(*(_downsample(channels[j], channels[i] if k == steps - 1 else channels[j],
                                           relu=k < steps - 1) for k in range(steps)))

    def forward(self, x: list) -> list:
        out = [branch(s) for branch, s in zip(self.layers, x)]
        fused = []
        for i, fuse in enumerate(self.fuse_layers):
            y = out[0] if i == 0 else fuse[0](out[0])
            y = y + y  # PaddleDetection's loop adds branch 0's term twice; the weights expect it
            for j in range(1, self.num_branches):
                y = y + (out[j] if j == i else fuse[j](out[j]))
            if i == 0:
                out[0] = y  # the other outputs fuse branch 0 as already fused (pre-ReLU), as trained
            fused.append(F.relu(y))
        return fused


class DepthWiseSeparableConvNormLayer(nn.Layer):
    def __init__(self, ch_in: int, ch_out: int):
        super().__init__()
        self.depthwise_conv = _depthwise(ch_in)
        self.pointwise_conv = _pointwise(ch_in, ch_out)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class IterativeHead(nn.Layer):
    """Coarsest to finest: each branch adds the previous result (bilinear, align corners) and
    narrows to the next finer branch's width; returns the finest."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        coarse_first = channels[::-1]
        widths = coarse_first[1:] + coarse_first[-1:]
        self.projects = nn.LayerList([DepthWiseSeparableConvNormLayer(c, w) for c, w in zip(coarse_first, widths)])

    def forward(self, x: list):
        last = None
        for project, s in zip(self.projects, x[::-1]):
            if last is not None:
                s = s + F.interpolate(last, size=s.shape[-2:], mode="bilinear", align_corners=True)
            last = project(s)
        return last


class LiteHRNet(nn.Layer):
    def __init__(self):
        super().__init__()
        self.stem = Stem()
        previous: tuple[int, ...] = (STEM_CHANNELS,)
        for stage, modules in enumerate(MODULES_PER_STAGE):
            channels = BRANCH_CHANNELS[:stage + 2]
            setattr(self, f"transition{stage}", self._transition(previous, channels))
            setattr(self, f"stage{stage}", nn.Sequential(*(LiteHRNetModule(channels) for _ in range(modules))))
            previous = channels
        self.head_layer = IterativeHead(previous)

    @staticmethod
    def _transition(previous: tuple[int, ...], channels: tuple[int, ...]) -> nn.LayerList:
        """Existing branches change width if needed; the new branch down-samples the last one."""
        layers: list[nn.Layer | None] = []
        for i, c in enumerate(channels):
            if i < len(previous):
                layers.append(None if c == previous[i] else nn.Sequential(
                    *_conv_bn(previous[i], previous[i], 3, groups=previous[i]), *_conv_bn(previous[i], c, 1),
                    nn.ReLU()))
            else:
                layers.append(nn.Sequential(_downsample(previous[-1], c, relu=True)))
        return nn.LayerList(layers)

    def forward(self, image):
        branches = [self.stem(image)]
        for stage in range(len(MODULES_PER_STAGE)):
            inputs = [branches[min(j, len(branches) - 1)] for j in range(stage + 2)]  # the new branch: from the last
            branches = [x if layer is None else layer(x)
                        for x, layer in zip(inputs, getattr(self, f"transition{stage}"))]
            branches = getattr(self, f"stage{stage}")(branches)
        return self.head_layer(branches)


class TinyPose(nn.Layer):
    """LiteHRNet features at 1/4 of the input -> K heatmaps."""

    def __init__(self, num_joints: int):
        super().__init__()
        self.backbone = LiteHRNet()
        self.final_conv = nn.Conv2D(HEAD_CHANNELS, num_joints, 1)

    def forward(self, image):
        """image (N, 3, H, W) float32 -> heatmaps (N, K, H/4, W/4)."""
        return self.final_conv(self.backbone(image))


def build_tinypose(input_size: tuple[int, int] = (128, 96), num_joints: int = 17) -> TinyPose:
    """PP-TinyPose for crops of input_size (height, width), both multiples of 32 (the coarsest
    branch is at 1/32 and every up-sampling doubles exactly)."""
    height, width = input_size
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise ValueError(f"TinyPose input_size (height, width) must be positive multiples of 32, got {input_size}")
    if num_joints <= 0:
        raise ValueError(f"num_joints must be positive, got {num_joints}")
    return TinyPose(num_joints)
