"""The lifter network: the simple baseline of Martinez et al. (ICCV 2017) over a window of poses.

The window (N, T, 17, 3) is flattened and mapped by a linear layer to `width` features, then by
`blocks` residual blocks of two (linear, batch norm, ReLU, dropout) layers, to the last frame's
root-relative 3D joints (N, 17, 3). Batch norm and dropout fold away in the exported network.

One block, not the paper's two: OpenVINO 2026.4's CPU plugin crashes (segmentation fault in
compile_model) on two residual blocks of fully connected layers in a row whenever
INFERENCE_NUM_THREADS is set, which the lift3d stage's `threads` does; the export runs the IR
that way to catch such crashes. On the CMU clips one block does as well.
"""

from __future__ import annotations

import paddle
from paddle import nn


class _Dense(nn.Sequential):
    def __init__(self, inputs: int, outputs: int, dropout: float):
        super().__init__(nn.Linear(inputs, outputs), nn.BatchNorm1D(outputs), nn.ReLU(), nn.Dropout(dropout))


class _Residual(nn.Layer):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(_Dense(width, width, dropout), _Dense(width, width, dropout))

    def forward(self, x):
        return x + self.body(x)


class PoseLifter(nn.Layer):
    """window: poses per input (T); joints: K; width: features per layer; blocks: residual blocks."""

    def __init__(self, window: int = 3, joints: int = 17, width: int = 512, blocks: int = 1, dropout: float = 0.0):
        super().__init__()
        self.window, self.joints = window, joints
        self.stem = _Dense(window * joints * 3, width, dropout)
        self.blocks = nn.Sequential(*(_Residual(width, dropout) for _ in range(blocks)))
        self.head = nn.Linear(width, joints * 3)

    def forward(self, poses):
        x = paddle.reshape(poses, [-1, self.window * self.joints * 3])
        return paddle.reshape(self.head(self.blocks(self.stem(x))), [-1, self.joints, 3])
