"""Put a trained lifter folder into the package: `python -m trainers.lifter.ship TRAINED SHIPPED`.

The package carries only what the CPU default engine reads, the OpenVINO IR, with its weights
stored as float16 (1.3 MB instead of 2.5 MB; OpenVINO computes in float32 after loading) beside
infer_cfg.yml, train_config.yml and metrics.yml. The Paddle 3 copy stays in the trained folder.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import openvino as ov

SIDECARS = ("infer_cfg.yml", "train_config.yml", "metrics.yml")


def ship(trained: Path, shipped: Path) -> None:
    if shipped.exists():
        shutil.rmtree(shipped)
    shipped.mkdir(parents=True)
    model = ov.Core().read_model(str(trained / "model.xml"))
    ov.save_model(model, str(shipped / "model.xml"), compress_to_fp16=True)
    for name in SIDECARS:
        shutil.copy(trained / name, shipped / name)


if __name__ == "__main__":
    ship(Path(sys.argv[1]), Path(sys.argv[2]))
