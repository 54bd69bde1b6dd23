"""What every inference engine offers: named input and output tensors, and `run`.

Engines are not thread-safe: each stage thread loads its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from streampose.models.folder import ModelFolder


class EngineError(RuntimeError):
    """An engine cannot load or run a model."""


class EngineUnavailableError(EngineError):
    """The requested engine, device or precision is not available on this machine."""


class InputShapeError(ValueError):
    """A feed does not match the network's inputs."""


@dataclass(frozen=True)
class TensorInfo:
    """A network input or output.

    name:  tensor name, the key in `run`'s feed and result.
    shape: dimensions, -1 where the size varies; dimension 0 is the batch.
    dtype: numpy dtype of the values.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


def probe(run, inputs: list[TensorInfo], try_batch_two: bool,
          spatial: tuple[int, int] | None = None) -> tuple[list[TensorInfo], bool]:
    """Run zeros through `run` (feed dict -> output dict) to learn the outputs, and whether a
    batch of two really comes back as two (some exports fold the batch into another dimension).

    Dynamic image dimensions (dims 2, 3 of a 4-D input) are probed at `spatial` (height, width),
    other dynamic dimensions at 1; output shapes are then those at that size.
    Returns (outputs with dimension 0 as -1, batch_capable)."""

    def size(info: TensorInfo, axis: int, dim: int) -> int:
        if dim != -1:
            return dim
        if spatial and len(info.shape) == 4 and axis in (2, 3):
            return spatial[axis - 2]
        return 1

    def zeros(batch: int) -> dict[str, np.ndarray]:
        return {t.name: np.zeros((batch, *(size(t, a, d) for a, d in enumerate(t.shape) if a)), t.dtype)
                for t in inputs}

    result = run(zeros(1))
    outputs = [TensorInfo(name, (-1, *value.shape[1:]), value.dtype) for name, value in result.items()]
    batch_capable = try_batch_two and all(v.shape[:1] == (2,) for v in run(zeros(2)).values())
    return outputs, batch_capable


class Engine:
    """A loaded network. Subclasses implement `_run` for one batch the network can take.

    `run` takes any batch size from 1 to `max_batch`. When the network itself only takes a
    batch of 1 (`batch_capable` False; e.g. a Paddle export with the batch fixed in a reshape),
    larger batches run image by image and the results are stacked.
    """

    name: str
    parallel: int = 1  # runs `run_parallel` may have going at once (OpenVINO CPU streams)

    def __init__(self, folder: ModelFolder, inputs: list[TensorInfo], outputs: list[TensorInfo],
                 max_batch: int, batch_capable: bool, precision: str = "fp32"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.folder = folder
        self.precision = precision
        self.inputs = inputs
        self.outputs = outputs
        self.max_batch = max_batch
        self.batch_capable = batch_capable

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. `feed` maps every input name to an array of that input's shape with
        the batch (1..max_batch) in dimension 0; returns every output by name, same batch."""
        batch = self._check_feed(feed)
        if batch == 1 or self.batch_capable:
            return self._run(feed)
        parts = [self._run({k: v[i:i + 1] for k, v in feed.items()}) for i in range(batch)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def run_parallel(self, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """`run` of each feed, up to `parallel` of them at once (an engine that cannot runs them
        one after the other); the results in the feeds' order."""
        if self.parallel == 1 or len(feeds) == 1 or not self.batch_capable:
            return [self.run(feed) for feed in feeds]
        for feed in feeds:
            self._check_feed(feed)
        return self._run_parallel(feeds)

    def _run_parallel(self, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        raise NotImplementedError

    def prepare(self, batch_sizes: Iterable[int]) -> None:
        """Make every batch size in `batch_sizes` (each 1..max_batch) ready, so that no later
        `run` pays a compile. Engines that run any batch without one do nothing."""

    def close(self) -> None:
        """Release the network; the engine is unusable afterwards."""

    def describe(self) -> str:
        """One line: engine, model, inputs."""
        shapes = ", ".join(f"{t.name}{list(t.shape)}" for t in self.inputs)
        return f"{self.name} engine for {self.folder.name} ({shapes}, batch 1..{self.max_batch}, {self.precision})"

    def _check_feed(self, feed: dict[str, np.ndarray]) -> int:
        expected_names = {t.name for t in self.inputs}
        if feed.keys() != expected_names:
            missing = sorted(expected_names - feed.keys())
            extra = sorted(feed.keys() - expected_names)
            raise InputShapeError(f"model {self.folder.name}: feed must hold exactly the inputs "
                                  f"{sorted(expected_names)}" + (f"; missing {missing}" if missing else "")
                                  + (f"; unknown {extra}" if extra else ""))
        batches = set()
        for info in self.inputs:
            value = feed[info.name]
            prefix = f"model {self.folder.name}: input '{info.name}'"
            if not isinstance(value, np.ndarray):
                raise InputShapeError(f"{prefix}: expected a numpy array, got {type(value).__name__}")
            if value.dtype != info.dtype:
                raise InputShapeError(f"{prefix}: expected dtype {info.dtype}, got {value.dtype}")
            fits = value.ndim == len(info.shape) and all(
                want in (-1, got) for want, got in zip(info.shape[1:], value.shape[1:]))
            if not fits or not 1 <= value.shape[0] <= self.max_batch:
                expected = ["N", *("?" if d == -1 else d for d in info.shape[1:])]
                raise InputShapeError(f"{prefix}: expected shape [{', '.join(map(str, expected))}] with "
                                      f"N in 1..{self.max_batch}, got {list(value.shape)}")
            batches.add(value.shape[0])
        if len(batches) > 1:
            raise InputShapeError(f"model {self.folder.name}: inputs have different batch sizes {sorted(batches)}")
        return batches.pop()
