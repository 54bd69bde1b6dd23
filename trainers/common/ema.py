"""Exponential moving average (EMA) of a network's weights, the copy that is evaluated and exported.

shadow <- d * shadow + (1 - d) * weight after every step, for every floating-point entry of
the state dict (parameters and batch-norm statistics), with d = min(decay, (1 + n) / (10 + n))
after n updates, so early shadows are not dominated by the random initial weights
(PaddleDetection's ModelEMA warm-up).
"""

from __future__ import annotations

import contextlib

import paddle


class ModelEMA:
    def __init__(self, layer: paddle.nn.Layer, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {name: value.detach().clone() for name, value in layer.state_dict().items()
                       if paddle.is_floating_point(value)}

    @paddle.no_grad()
    def update(self, layer: paddle.nn.Layer) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        state = layer.state_dict()
        for name, shadow in self.shadow.items():
            shadow.set_value(shadow * d + state[name].detach().astype(shadow.dtype) * (1 - d))

    @contextlib.contextmanager
    def applied(self, layer: paddle.nn.Layer):
        """`layer` holds the averaged weights inside the block, its own ones again after it."""
        own = {name: value.detach().clone() for name, value in layer.state_dict().items() if name in self.shadow}
        layer.set_state_dict(self.shadow)
        try:
            yield layer
        finally:
            layer.set_state_dict(own)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "decay": self.decay, "shadow": self.shadow}

    def set_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].set_value(value)
