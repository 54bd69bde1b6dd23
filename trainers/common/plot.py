"""Draw a run log (trainers.common.runlog) as a PNG: training loss, and validation metrics.

    python -m trainers.common.plot RUN/log.jsonl [-o RUN/curves.png]

Left: the `loss` of "train" records against `step` (log scale when it spans a decade or more).
Right: the chosen numeric values of "eval" records (default: all but step, epoch and time)
against `step`; negative values are left out (pycocotools reports "no such persons" as -1).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from trainers.common.runlog import read_log

_NOT_METRICS = {"kind", "time", "step", "epoch"}


def plot_run(log_path: Path, png_path: Path, title: str | None = None, metrics: Sequence[str] | None = None) -> Path:
    """Write the curves of the run logged at `log_path` to `png_path` (`metrics`: the eval
    values to draw, default all)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [r for r in records if r["kind"] == "train" and r.get("loss") is not None]
    evals = [r for r in records if r["kind"] == "eval"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        losses = [r["loss"] for r in train]
        left.plot([r["step"] for r in train], losses, color="tab:blue")
        if min(losses) > 0 and max(losses) / min(losses) >= 10:
            left.set_yscale("log")
    left.set(xlabel="step", ylabel="training loss", title="loss")
    left.grid(alpha=0.3)
    names = metrics or sorted({k for r in evals for k, v in r.items()
                               if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)})
    drawn = []
    for name in names:
        points = [(r["step"], r[name]) for r in evals if isinstance(r.get(name), (int, float)) and r[name] >= 0]
        if points:
            right.plot(*zip(*points), marker="o", label=name)
            drawn.append(name)
    right.set(xlabel="step", title="validation")
    right.grid(alpha=0.3)
    if drawn:
        right.legend(fontsize=8)
    figure.suptitle(title or Path(log_path).parent.name)
    figure.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return png_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.common.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="a run's log.jsonl")
    parser.add_argument("-o", "--output", type=Path, help="PNG to write (default: curves.png beside the log)")
    parser.add_argument("--metrics", nargs="+", help="eval values to draw (default: all)")
    args = parser.parse_args(argv)
    if not args.log.is_file():
        parser.error(f"{args.log}: no such log")
    print(plot_run(args.log, args.output or args.log.with_name("curves.png"), metrics=args.metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
