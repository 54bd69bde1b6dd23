"""The `streampose` command: run, validate, schema, subscribe, models, keys."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from streampose import __version__
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
    from streampose import shard
    from streampose.graph.check import check_graph
    from streampose.runtime.monitor import BindError, MonitorServer, PeriodicLog
    from streampose.web.app import LiveView

    try:
        if args.shard:
            os.environ[shard.ENV] = args.shard  # the mqtt stage names its node after it
        mine = shard.from_environment()
    except ValueError as error:
        print(f"--shard / ${shard.ENV}: {error}", file=sys.stderr)
        return 2
    try:
        graph = load_graph(args.graph, args.overrides, import_plugins=True)
        # Fail before any model loads; binds report below, and a missing file is its stream's failure.
        check_graph(graph, _model_paths(args), args.output, missing_sources_fatal=False)
    except GraphError as error:
        print(error, file=sys.stderr)
        return 2
    runtime = graph.spec.runtime
    logging.basicConfig(level=runtime.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if mine is not None:
        every = [source.id for source in graph.spec.sources]
        graph = shard.select(graph, mine)
        log.info("shard %s runs %d of %d sources: %s", mine, len(graph.spec.sources), len(every),
                 ", ".join(source.id for source in graph.spec.sources) or "none")
        if not graph.spec.sources:
            print(f"{args.graph}: shard {mine} owns none of the {len(every)} sources; run fewer shards",
                  file=sys.stderr)
            return 0
    metrics = runtime.metrics
    shows_video = any(stage.type == "live" for stage in graph.spec.stages)
    if shows_video and metrics.bind and metrics.token is None and not _loopback(metrics.bind.rpartition(":")[0]):
        print(f"{args.graph}: runtime.metrics.bind {metrics.bind} is reachable from other machines, and the "
              f"live view shows the cameras: set runtime.metrics.token (e.g. ${{STREAMPOSE_WEB_TOKEN}}, 16 "
              f"characters or more) or bind 127.0.0.1", file=sys.stderr)
        return 2
    # The endpoints answer `starting` while the pipeline's imports (1.6 s) and models (6-8 s)
    # load, and a taken port is reported before that wait rather than after it.
    try:
        monitor = None
        if metrics.bind:
            monitor = MonitorServer(metrics.bind, LiveView(lambda: monitor.pipeline, metrics.token).routes())
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
    # A stream that failed (a file that cannot be opened, a camera given up on) is a run that did
    # not do its work, whatever the others did: a script or a service manager must see it.
    failed = [stream for stream, state in pipeline.streams.items() if state.state == "failed"]
    if failed:
        print(f"{args.graph}: {len(failed)} of {len(pipeline.streams)} streams failed ({', '.join(failed)}): "
              f"the reason is logged above as 'stream ... failed'; fix the source's uri", file=sys.stderr)
    return 0 if finished and not failed else 1


def probe_command(args) -> int:
    """Exit 0 once `url` answers 2xx, 1 with one line if it has not within --wait seconds: the health
    check of containers and systemd units, without curl in the image."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + args.wait
    while True:
        try:
            with urllib.request.urlopen(args.url, timeout=2):
                return 0
        except urllib.error.HTTPError as error:
            problem = f"{error.code} {error.read().decode(errors='replace').strip()[:300]}"
        except (OSError, ValueError) as error:
            problem = str(getattr(error, "reason", error))
        if time.monotonic() >= deadline:
            print(f"{args.url}: {problem}", file=sys.stderr)
            return 1
        time.sleep(1)


def _loopback(host: str) -> bool:
    import ipaddress
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    """What `run` checks before it starts, and nothing more: no stream opens, no network loads."""
    from streampose.graph.check import check_graph

    try:
        graph = load_graph(args.graph, args.overrides)
        warnings = check_graph(graph, _model_paths(args), args.output)
    except GraphError as error:
        print(error, file=sys.stderr)
        return 2
    for warning in warnings:
        print(warning, file=sys.stderr)
    spec = graph.spec
    print(f"{args.graph}: ok ({len(spec.sources)} sources, {len(spec.stages)} stages)")
    for stage in spec.stages:
        print(f"  {stage.id} ({stage.type}) <- {', '.join(graph.inputs[stage.id])}")
    return 0


def schema_command(args) -> int:
    from streampose.graph.docs import markdown
    print(markdown())
    return 0


def _positive(kind):
    """An argparse type: a number of `kind` above 0."""
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} is not above 0")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value" messages
    return parse


def infer_command(args) -> int:
    from streampose.infer import Inference, InputError

    stop = threading.Event()

    def on_signal(signum, _frame):
        # The first signal ends the input and lets the outputs be finished; a second one
        # interrupts whatever is running.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        inference = Inference(args.input, args.graph, args.output, _model_paths(args), args.overrides,
                              jsonl=args.jsonl)
    except GraphError as error:
        print(error, file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as error:  # the input, a model, an engine: as `run` reports them
        print(f"streampose infer: {error}", file=sys.stderr)
        return 2
    try:
        written = inference.run(stop, max_frames=args.max_frames, duration_s=args.duration)
    except InputError as error:
        print(f"streampose infer: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("streampose infer: interrupted", file=sys.stderr)
        return 130
    for path in written:
        print(f"wrote {path}")
    return 0


def keys(args) -> int:
    from streampose.sinks.publisher import make_curve_keys
    try:
        public, secret = make_curve_keys(Path(args.directory))
    except OSError as error:  # keys there already (FileExistsError says what to do), a folder not writable
        print(f"streampose keys: {error}", file=sys.stderr)
        return 2
    print(f"public key: {public}\nsecret key: {secret} (keep it private; name it in the publisher's curve_secret_key)")
    return 0


# --------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streampose", description="Real-time multi-stream human pose daemon.")
    parser.add_argument("--version", action="version", version=f"streampose {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("run", help="run a graph until its sources end or SIGINT/SIGTERM")
    _add_graph_arguments(p)
    p.add_argument("-o", "--output", type=Path, help="output folder (default: the graph's runtime.output_dir)")
    p.add_argument("--shard", metavar="I/N", help="run only the sources rendezvous hashing gives to shard I of N "
                   "(0-based; I may be a StatefulSet pod name such as streampose-2); default: $STREAMPOSE_SHARD, "
                   "else every source")
    p.set_defaults(func=run)

    p = commands.add_parser("validate", help="check a graph, its models, files and addresses without opening "
                            "sources or loading networks")
    _add_graph_arguments(p)
    p.add_argument("-o", "--output", type=Path, help="output folder to check (default: the graph's "
                   "runtime.output_dir)")
    p.set_defaults(func=validate)

    p = commands.add_parser("probe", help="exit 0 when a health endpoint answers 200 (for container and systemd "
                            "health checks)")
    p.add_argument("url", nargs="?", default="http://127.0.0.1:9100/livez", help="endpoint (default: %(default)s)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="keep asking this long before failing")
    p.set_defaults(func=probe_command)

    p = commands.add_parser("schema", help="print the graph parameter reference (Markdown)")
    p.set_defaults(func=schema_command)

    p = commands.add_parser("infer", help="draw, and log as JSON lines, what a graph's models find in an image, "
                                          "image folder, video, network stream or webcam")
    p.add_argument("input", help="image, folder of images, video file, rtsp:// (rtsps, rtmp, http, https) URL, "
                                 "or webcam (/dev/video0, or just 0)")
    p.add_argument("--graph", type=Path, help="graph whose processing stages run (default: the packaged "
                                              "detector, keypoints, tracker, smoother graph)")
    p.add_argument("-o", "--output", type=Path, default=Path("out/infer"), help="folder for the annotated copies")
    p.add_argument("--jsonl", type=Path, metavar="PATH",
                   help="also write each frame's pose message (docs/messages.md) as one JSON line (overwrites)")
    p.add_argument("--max-frames", type=_positive(int), metavar="N", help="stop after N frames")
    p.add_argument("--duration", type=_positive(float), metavar="SECONDS", help="stop after this many seconds")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a graph value, e.g. stages.pose.model=tinypose_256x192_ov (repeatable)")
    add_models_argument(p)
    p.set_defaults(func=infer_command)

    p = commands.add_parser("keys", help="create a CURVE key pair for an encrypted publisher")
    p.add_argument("directory", help="folder to write the key files into")
    p.set_defaults(func=keys)

    from streampose.calib import add_calib_parser
    from streampose.client import add_subscribe_parser
    from streampose.evaluate import add_evaluate_parser
    from streampose.models.cli import add_models_parser
    add_subscribe_parser(commands)
    add_models_parser(commands)
    add_calib_parser(commands)
    add_evaluate_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def run_pipeline_main(argv: list[str] | None = None) -> int:
    """`python run_pipeline.py GRAPH [options]`: the same as `streampose run`."""
    argv = sys.argv[1:] if argv is None else argv
    return main(["run", *argv] if not any(a in ("-h", "--help") for a in argv[:1]) else ["run", "--help"])
