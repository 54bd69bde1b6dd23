"""A stage that passes frames on, optionally after a delay: a stand-in for a
model's cost (`noop`) or a slow sink's (`noop_sink`) in tests and benchmarks."""

import time

from streampose.frame import Frame
from streampose.runtime.stage import Stage


class NoopStage(Stage):
    def process(self, frames: list[Frame]) -> None:
        if self.params.delay_ms:
            time.sleep(self.params.delay_ms / 1000)
