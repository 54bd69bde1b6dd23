"""`streampose models list|info|pull|convert`: the model commands.

`add_models_parser(subparsers)` adds them to the main parser; each sets `func(args) -> exit code`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from streampose.engines import PRECISIONS
from streampose.models.convert import SUFFIXES, ConvertError, convert
from streampose.models.folder import (ModelFolderError, ModelNotFoundError, NETWORK_FILES, default_search_path,
                                      find_model, load_model_folder)
from streampose.models.infer_cfg import InferConfigError
from streampose.models.pull import PullError, pull
from streampose.models.zoo import ZooError, load_zoo

_USER_ERRORS = (ModelNotFoundError, ModelFolderError, InferConfigError, ZooError, PullError, ConvertError)


def add_models_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("models", help="list, inspect, download and convert models")
    parser.add_argument("--models", action="append", type=Path, default=[], metavar="DIR",
                        help="also search DIR for models (before $STREAMPOSE_MODELS, ./models and the cache); "
                             "repeatable")
    commands = parser.add_subparsers(dest="models_command", required=True, metavar="COMMAND")

    cmd = commands.add_parser("list", help="models on the search path, and those `pull` can download")
    cmd.set_defaults(func=cmd_list)

    cmd = commands.add_parser("info", help="inputs, outputs, pre-processing and a quick latency probe")
    cmd.add_argument("name", help="model name (looked up on the search path) or folder path")
    cmd.add_argument("--engine", default="auto", choices=["auto", "openvino", "paddle", "onnxruntime"])
    cmd.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    cmd.add_argument("--precision", default="fp32", choices=PRECISIONS,
                     help="numeric precision, as the graph's `precision` key")
    cmd.add_argument("--threads", type=int, default=0, help="CPU inference threads; 0 = all cores")
    cmd.add_argument("--runs", type=int, default=20, help="timed runs of the latency probe (0 skips it)")
    cmd.set_defaults(func=cmd_info)

    cmd = commands.add_parser("pull", help="download a model from the zoo into the cache")
    cmd.add_argument("name", help="zoo model name (see `streampose models list`)")
    cmd.add_argument("--dest", type=Path, help="install under DIR instead of the cache (~/.cache/streampose/models)")
    cmd.add_argument("--force", action="store_true", help="download again even if present")
    cmd.set_defaults(func=cmd_pull)

    cmd = commands.add_parser("convert", help="write a model in another network format")
    cmd.add_argument("name", help="model name or folder path")
    cmd.add_argument("--to", required=True, choices=sorted(SUFFIXES), help="target format")
    cmd.add_argument("--dest", type=Path, help="write under DIR instead of the cache (~/.cache/streampose/models)")
    cmd.add_argument("--force", action="store_true", help="replace an existing converted folder")
    cmd.set_defaults(func=cmd_convert)
    return parser


def _search_path(args) -> list[Path]:
    return default_search_path(list(getattr(args, "models", None) or []))


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def cmd_list(args) -> int:
    rows, seen = [], set()
    networks = {net for net, _ in NETWORK_FILES.values()}
    for base in _search_path(args):
        if not base.is_dir():
            continue
        for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not any((folder / net).is_file() for net in networks):
                continue
            note = "shadowed" if folder.name in seen else ""
            seen.add(folder.name)
            try:
                model = load_model_folder(folder)
            except (ModelFolderError, InferConfigError) as exc:
                rows.append((folder.name, "?", "?", "?", "?", f"unusable: {exc}"))
                continue
            size = model.config.input_size
            rows.append((model.name, model.format, model.config.arch, model.config.task,
                         f"{size[1]}x{size[0]}" if size else "dynamic", note or str(folder)))
    print(_table(("NAME", "FORMAT", "ARCH", "TASK", "INPUT WxH", "WHERE"), rows) if rows
          else "no models on the search path: " + ", ".join(map(str, _search_path(args))))
    try:
        zoo = load_zoo()
    except ZooError as exc:
        return _fail(exc)
    missing = [(e.name, e.description) for e in zoo.values() if e.name not in seen]
    if missing:
        print("\ndownloadable with `streampose models pull NAME`:")
        print(_table(("NAME", "DESCRIPTION"), missing))
    return 0


def cmd_info(args) -> int:
    from streampose.engines import EngineError, load_engine

    try:
        model = find_model(args.name, _search_path(args))
        engine = load_engine(model, engine=args.engine, device=args.device, precision=args.precision,
                             threads=args.threads)
    except (*_USER_ERRORS, EngineError) as exc:
        return _fail(exc)
    cfg = model.config
    print(f"model:      {model.name} ({model.path})")
    print(f"format:     {model.format}, network {model.network.name}" + (f" + {model.weights.name}" if model.weights else ""))
    print(f"config:     {cfg.source}")
    print(f"arch:       {cfg.arch} ({cfg.task}), channel order {cfg.channel_order}")
    print(f"labels:     {len(cfg.label_list)} in the config: {', '.join(cfg.label_list[:8])}"
          + (" ..." if len(cfg.label_list) > 8 else ""))
    if cfg.nms:
        print(f"nms:        {dict(cfg.nms)}")
    print(f"engine:     {engine.describe()}")
    print("inputs:")
    for t in engine.inputs:
        print(f"  {t.name:<40} {str(list(t.shape)):<22} {t.dtype}")
    print("outputs:")
    for t in engine.outputs:
        print(f"  {t.name:<40} {str(list(t.shape)):<22} {t.dtype}")
    print("pre-processing:")
    for op in cfg.preprocess:
        print(f"  {op.type:<18} {dict(op.params) if op.params else ''}")
    if args.runs > 0:
        feed = {t.name: np.random.default_rng(0).random((1, *(d if d > 0 else 1 for d in t.shape[1:])))
                .astype(t.dtype) for t in engine.inputs}
        engine.run(feed)
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            engine.run(feed)
            times.append((time.perf_counter() - start) * 1000)
        print(f"latency:    batch 1, {args.runs} runs: median {statistics.median(times):.2f} ms, "
              f"min {min(times):.2f} ms")
    engine.close()
    return 0


def cmd_pull(args) -> int:
    try:
        model = pull(args.name, args.dest, force=args.force, progress=sys.stderr.isatty())
    except _USER_ERRORS as exc:
        return _fail(exc)
    print(f"{model.name}: {model.format} {model.config.arch} model at {model.path}")
    return 0


def cmd_convert(args) -> int:
    try:
        model = find_model(args.name, _search_path(args))
        converted = convert(model, args.to, args.dest, force=args.force)
    except _USER_ERRORS as exc:
        return _fail(exc)
    print(f"{model.name} -> {converted.name}: {converted.format} model at {converted.path}")
    return 0


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in (header, *rows))
