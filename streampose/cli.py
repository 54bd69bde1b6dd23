"""The `streampose` command: run, validate, schema, subscribe, models, keys."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from streampose.graph.loader import GraphError, load_graph

log = logging.getLogger("streampose")


def _add_graph_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", type=Path, help="graph file (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a graph value, e.g. stages.pose.batch.max_size=16 (repeatable)")
    add_models_argument(parser)


def add_models_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", action="append", default=[], metavar="DIR",
                        help="folder searched for models named by name (repeatable; before $STREAMPOSE_MODELS)")


def _model_paths(args) -> list[Path]:
    from streampose.models.folder import default_search_path
    return default_search_path([Path(p) for p in args.models])


# --------------------------------------------------------------------------- run

def run(args) -> int:
    from streampose.runtime.monitor import BindError, MonitorServer, PeriodicLog

    try:
        graph = load_graph(args.graph, args.overrides)
    except GraphError as error:
        print(error, file=sys.stderr)
        return 2
    runtime = graph.spec.runtime
    logging.basicConfig(level=runtime.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The endpoints answer `starting` while the pipeline's imports (1.6 s) and models (6-8 s)
    # load, and a taken port is reported before that wait rather than after it.
    try:
        monitor = MonitorServer(runtime.metrics.bind) if runtime.metrics.bind else None
    except BindError as error:
        print(f"{args.graph}: {error}", file=sys.stderr)
        return 2
    if monitor:
        monitor.start()
    from streampose.runtime.pipeline import Pipeline
    try:
        pipeline = Pipeline(graph, model_paths=_model_paths(args), output_dir=args.output)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"{args.graph}: {error}", file=sys.stderr)
        if monitor:
            monitor.close()
        return 2

    def on_signal(signum, _frame):
        if pipeline.lifecycle == "stopping":
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        pipeline.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    periodic = PeriodicLog(pipeline, runtime.metrics.log_interval_s)
    started = time.time()
    if monitor:
        monitor.attach(pipeline)
    pipeline.start()
    periodic.start()
    while not pipeline.wait(timeout=0.2) and not pipeline.lifecycle == "stopping":
        pass
    finished = pipeline.shutdown()
    periodic.close()
    if monitor:
        monitor.close()
    _print_summary(pipeline, started)
    return 0 if finished else 1


def _rate(processed: int, state) -> float:
    """Frames per second over the stream's own span, from its first to its last frame."""
    span = state.last_frame_wall - state.first_frame_wall
    return (processed - 1) / span if processed > 1 and span > 0 else 0.0


def _print_summary(pipeline, started: float) -> None:
    elapsed = time.time() - started
    metrics = pipeline.metrics
    last_stage = list(pipeline.runners)[-1]
    print(f"\nstreampose: {pipeline.graph.path.name} ran {elapsed:.1f} s")
    for stream, state in pipeline.streams.items():
        processed = metrics.count("frames", stage=last_stage, stream=stream)
        latency = metrics.quantiles("e2e_latency", stream=stream)
        shown = f", latency p50 {latency[0] * 1e3:.0f} ms p95 {latency[1] * 1e3:.0f} ms" if latency else ""
        print(f"  {stream}: {state.state}, {metrics.count('frames_captured', stream=stream)} frames decoded, "
              f"{processed} processed ({_rate(processed, state):.1f}/s), "
              f"{metrics.count('drops', stream=stream)} dropped, "
              f"{metrics.count('errors', stream=stream)} errors, {metrics.count('reconnects', stream=stream)} "
              f"reconnects{shown}")
        events = metrics.count_by("events", "kind", stream=stream)
        if events:
            print(f"    events: {', '.join(f'{kind} x{n}' for kind, n in sorted(events.items()))}")
    written = sorted(p for p in pipeline.output_dir.rglob("*") if p.is_file() and p.stat().st_mtime >= started)
    for path in written:
        print(f"  wrote {path}")


# --------------------------------------------------------------------------- validate / schema

def validate(args) -> int:
    try:
        graph = load_graph(args.graph, args.overrides)
    except GraphError as error:
        print(error, file=sys.stderr)
        return 2
    spec = graph.spec
    print(f"{args.graph}: ok ({len(spec.sources)} sources, {len(spec.stages)} stages)")
    for stage in spec.stages:
        print(f"  {stage.id} ({stage.type}) <- {', '.join(graph.inputs[stage.id])}")
    return 0


def schema_command(args) -> int:
    from streampose.graph.docs import markdown
    print(markdown())
    return 0


def infer_command(args) -> int:
    from streampose.infer import infer
    try:
        written = infer(args.input, args.graph, args.output, _model_paths(args), args.overrides)
    except GraphError as error:
        print(error, file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


def keys(args) -> int:
    from streampose.sinks.publisher import make_curve_keys
    public, secret = make_curve_keys(Path(args.directory))
    print(f"public key: {public}\nsecret key: {secret} (keep it private; name it in the publisher's curve_secret_key)")
    return 0


# --------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streampose", description="Real-time multi-stream human pose daemon.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("run", help="run a graph until its sources end or SIGINT/SIGTERM")
    _add_graph_arguments(p)
    p.add_argument("-o", "--output", type=Path, help="output folder (default: the graph's runtime.output_dir)")
    p.set_defaults(func=run)

    p = commands.add_parser("validate", help="check a graph file without opening sources or loading models")
    _add_graph_arguments(p)
    p.set_defaults(func=validate)

    p = commands.add_parser("schema", help="print the graph parameter reference (Markdown)")
    p.set_defaults(func=schema_command)

    p = commands.add_parser("infer", help="draw what a graph's models find in an image, image folder or video")
    p.add_argument("input", type=Path, help="image, folder of images, or video file")
    p.add_argument("--graph", type=Path, default=Path("graphs/demo.yml"), help="graph whose processing stages run")
    p.add_argument("-o", "--output", type=Path, default=Path("out/infer"), help="output folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    add_models_argument(p)
    p.set_defaults(func=infer_command)

    p = commands.add_parser("keys", help="create a CURVE key pair for an encrypted publisher")
    p.add_argument("directory", help="folder to write the key files into")
    p.set_defaults(func=keys)

    from streampose.calib import add_calib_parser
    from streampose.client import add_subscribe_parser
    from streampose.models.cli import add_models_parser
    add_subscribe_parser(commands)
    add_models_parser(commands)
    add_calib_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def run_pipeline_main(argv: list[str] | None = None) -> int:
    """`python run_pipeline.py GRAPH [options]`: the same as `streampose run`."""
    argv = sys.argv[1:] if argv is None else argv
    return main(["run", *argv] if not any(a in ("-h", "--help") for a in argv[:1]) else ["run", "--help"])
