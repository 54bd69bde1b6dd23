"""python -m trainers.export {model, tensorrt, quantize} ... (see trainers/export/__init__.py)."""

import os

os.environ.setdefault("GLOG_minloglevel", "2")  # before paddle is imported: no C++ info lines

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from streampose.models.folder import cache_root  # noqa: E402
from trainers.common.checkpoint import CheckpointError  # noqa: E402
from trainers.common.export import ExportError  # noqa: E402
from trainers.export.folders import FORMATS  # noqa: E402

DEFAULT_CALIB = cache_root() / "calib" / "keypoints"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.export",
                                     description="Export trained networks to streampose model folders.")
    commands = parser.add_subparsers(dest="command", required=True)

    model = commands.add_parser("model", help="checkpoint -> Paddle, OpenVINO IR and ONNX folders")
    model.add_argument("checkpoint", type=Path, help="a .pdckpt (a run's best.pdckpt)")
    model.add_argument("--out", type=Path, required=True, help="the Paddle folder; _ov and _onnx folders go beside it")
    model.add_argument("--formats", nargs="+", choices=FORMATS[1:], default=list(FORMATS[1:]),
                       help="formats besides Paddle (default: openvino onnx)")

    tensorrt = commands.add_parser("tensorrt", help="build TensorRT engines for a Paddle folder ahead of time")
    tensorrt.add_argument("folder", type=Path, help="the exported Paddle folder")
    tensorrt.add_argument("--precision", nargs="+", choices=("fp16", "int8"), default=["fp16"])
    tensorrt.add_argument("--max-batch", type=int, default=32,
                          help="the stage's largest batch (keypoints stage default: 32; 64 with flip_test)")
    tensorrt.add_argument("--calib", type=Path, default=DEFAULT_CALIB,
                          help=f"int8 calibration crops (calib/prepare_crops.py; default {DEFAULT_CALIB})")
    tensorrt.add_argument("--cache", type=Path, help="cache root (default: the pipeline's, ~/.cache/streampose)")

    quantize = commands.add_parser("quantize", help="OpenVINO INT8 (NNCF) of an IR folder, with AP and speed compared")
    quantize.add_argument("folder", type=Path, help="the exported OpenVINO IR folder (DIR_ov)")
    quantize.add_argument("--calib", type=Path, default=DEFAULT_CALIB, help="calibration crops folder")
    quantize.add_argument("--out", type=Path, help="INT8 folder (default: FOLDER_int8)")
    quantize.add_argument("--val-annotations", type=Path, help="held-out COCO keypoint JSON, to measure OKS AP")
    quantize.add_argument("--val-images", type=Path, help="its image folder")
    quantize.add_argument("--threads", type=int, default=2, help="CPU threads for the measurements")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.command == "model":
            return _model(args)
        if args.command == "tensorrt":
            return _tensorrt(args)
        return _quantize(args, parser)
    except (ExportError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _model(args) -> int:
    from trainers.export.folders import export_model

    report = export_model(args.checkpoint, args.out, ("paddle", *args.formats))
    for fmt, folder in report.folders.items():
        print(f"{fmt}: {folder} (max difference from the checkpoint's network {report.differences[fmt]:.2g})")
    for fmt, why in report.skipped.items():
        print(f"{fmt}: not written: {why}")
    return 0


def _tensorrt(args) -> int:
    from trainers.export.tensorrt import TensorRTUnavailable, build_engines

    try:
        lines = build_engines(args.folder, tuple(args.precision), args.max_batch, args.calib, args.cache)
    except TensorRTUnavailable as exc:
        print(f"tensorrt: no engines built: {exc}")
        return 0
    print("\n".join(lines))
    return 0


def _quantize(args, parser) -> int:
    import yaml

    from trainers.export.quantize import compare, quantize_folder

    if (args.val_annotations is None) != (args.val_images is None):
        parser.error("--val-annotations and --val-images go together")
    int8 = quantize_folder(args.folder, args.calib, args.out)
    print(f"int8: {int8}")
    print(yaml.safe_dump(compare(args.folder, int8, args.val_annotations, args.val_images, args.threads),
                         sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
