"""Checking a loaded graph against this machine, as `run` will meet it: models, files,
URI schemes, bind addresses, output folders, sources a copying recorder cannot copy.

`validate` runs these checks, and `run` runs them before it loads any model, so both fail
fast with the same messages. Nothing here opens a stream or loads a network: model folders
are found and their infer_cfg.yml read, files are looked for, ports are probed with a
socket that is closed at once. The loader (graph/loader.py) has already checked the
graph's own consistency and its plugins.

Every problem names the graph file and line (or the --set that gave the value), the
source or stage, and the key, as the loader's errors do.
"""

from __future__ import annotations

import difflib
import errno
import logging
import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from streampose.graph import schema
from streampose.graph.loader import GraphError, LoadedGraph
from streampose.sources.capture import NETWORK_SCHEMES, WEBCAM_PREFIX

# Stage type -> (the task its model folder must do, as InferConfig.task names it; that task
# for people), as each stage checks it when it loads its model (schema.ModelStage.MODEL_TASK).
MODEL_TASKS = {name: params.MODEL_TASK for name, params in schema.STAGE_TYPES.items()
               if issubclass(params, schema.ModelStage) and params.MODEL_TASK is not None}


class _Report:
    """Problems (errors) and warnings, each one line naming where in the graph."""

    def __init__(self, graph: LoadedGraph):
        self.graph = graph
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def line(self, path: tuple, owner: str, key: str, message: str) -> str:
        return f"{self.graph.where(path)}: {owner}: key '{key}': {message}"

    def error(self, path: tuple, owner: str, key: str, message: str) -> None:
        self.errors.append(self.line(path, owner, key, message))

    def warn(self, path: tuple, owner: str, key: str, message: str) -> None:
        self.warnings.append(self.line(path, owner, key, f"warning: {message}"))


def check_graph(graph: LoadedGraph, model_paths: list[Path], output_dir: Path | None = None,
                missing_sources_fatal: bool = True) -> list[str]:
    """Check everything `run` needs from outside the graph file; return the warnings (one
    line each) and raise GraphError listing every error. `output_dir` is the command's -o
    (default: the graph's runtime.output_dir). With `missing_sources_fatal` False (`run`), a
    missing local file or image folder is a warning: that stream fails at start and the
    others run."""
    report = _Report(graph)
    graph_dir = graph.path.parent
    output_folder = Path(output_dir or graph.spec.runtime.output_dir).absolute()  # as Pipeline resolves it
    for i, source in enumerate(graph.spec.sources):
        _check_source(report, i, source, graph_dir, report.error if missing_sources_fatal else report.warn)
    for i, stage in enumerate(graph.spec.stages):
        if stage.type in MODEL_TASKS:
            _check_model(report, i, stage, model_paths, graph_dir)
        if stage.type == "pose":
            _check_pose_model(report, i, stage, model_paths, graph_dir)
        if stage.type in ("lift3d", "pose") and stage.calib is not None:
            _check_calib(report, i, stage, graph_dir, _streams_reaching(graph, stage.id))
        if stage.type == "publisher":
            _check_publisher(report, i, stage, graph_dir)
        if stage.type in ("recorder", "clips", "jsonl"):
            _check_output_path(report, i, stage, output_folder, _streams_reaching(graph, stage.id))
        if stage.type == "recorder" and stage.encode == "copy":
            _check_copied_sources(report, i, stage, graph)
    bind = graph.spec.runtime.metrics.bind
    if bind is not None:
        _check_metrics_bind(report, bind)
    problem = _output_dir_problem(output_folder)
    if problem and output_dir is None:
        report.error(("runtime", "output_dir"), "runtime", "output_dir", problem)
    elif problem:
        report.errors.append(f"--output {output_dir}: {problem}")
    if report.errors:
        raise GraphError(report.errors)
    return report.warnings


def _streams_reaching(graph: LoadedGraph, stage_id: str) -> list[str]:
    """Ids of the sources whose frames reach `stage_id`, as the pipeline tells the stage."""
    sources = {s.id for s in graph.spec.sources}
    found, todo, seen = [], [stage_id], set()
    while todo:
        for name in graph.inputs.get(todo.pop(), []):
            if name in sources:
                if name not in found:
                    found.append(name)
            elif name not in seen:
                seen.add(name)
                todo.append(name)
    return found


# --------------------------------------------------------------------------- sources

def _check_source(report: _Report, index: int, source: schema.Source, graph_dir: Path, missing) -> None:
    from streampose.sources.images import find_images, is_image_pattern

    path, owner, uri = ("sources", index, "uri"), f"source '{source.id}'", source.uri
    scheme = urlsplit(uri).scheme.lower()
    if "://" in uri:
        if scheme not in NETWORK_SCHEMES:
            # Two letters swapped (rtps) is the commonest slip, and difflib would rank rtsps first.
            close = [s for s in NETWORK_SCHEMES if sorted(s) == sorted(scheme)] or \
                difflib.get_close_matches(scheme, NETWORK_SCHEMES, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}://'?)" if close else ""
            # Only the scheme is shown: the rest of a camera URL may hold a password.
            report.error(path, owner, "uri", f"unknown URI scheme '{scheme}://'{hint}; a source is a file, an "
                         f"image folder or glob, {', '.join(s + '://' for s in NETWORK_SCHEMES)} or "
                         f"{WEBCAM_PREFIX}N")
        elif not urlsplit(uri).hostname:
            report.error(path, owner, "uri", f"'{scheme}://' URL without a host; write {scheme}://HOST[:PORT]/PATH")
        return  # a network stream is only opened by `run`
    if uri.startswith(WEBCAM_PREFIX):
        if not Path(uri).exists():
            # `run` keeps retrying a live source, so a camera plugged in later is still found.
            report.warn(path, owner, "uri", f"no device {uri} right now (is the camera plugged in?)")
        return
    local = graph_dir / uri
    if is_image_pattern(uri) or local.is_dir():
        try:
            find_images(local)
        except FileNotFoundError as error:
            missing(path, owner, "uri", f"{error}; check the path (relative paths start at the graph "
                    f"file's folder {graph_dir})")
    elif not local.is_file():
        missing(path, owner, "uri", f"no such file {local}; check the path (relative paths start at the "
                f"graph file's folder {graph_dir})")


# --------------------------------------------------------------------------- stages

def _check_model(report: _Report, index: int, stage: schema.ModelStage, model_paths: list[Path],
                 graph_dir: Path) -> None:
    """The model folder is found and does the stage's task: the same lookup and check
    the stage makes (Stage.load_model, ModelFolder.require_task), without the engine."""
    from streampose.models.folder import ModelFolderError, find_model

    task, description = MODEL_TASKS[stage.type]
    try:
        folder = find_model(stage.model, model_paths, graph_dir)
        folder.require_task(task, description, ModelFolderError)
    except (OSError, ValueError) as error:
        fix = "" if isinstance(error, FileNotFoundError) else f"; give the {stage.type} stage {description}"
        report.error(("stages", index, "model"), f"stage '{stage.id}'", "model", f"{error}{fix}")


def _check_pose_model(report: _Report, index: int, stage: schema.Pose, model_paths: list[Path],
                      graph_dir: Path) -> None:
    """The pose stage's folder is found and holds its network kind's files, as the stage looks."""
    from streampose.models.folder import find_model_dir
    from streampose.posenets.networks import network_files

    try:
        network_files(find_model_dir(stage.model, model_paths, graph_dir), stage.network)
    except (OSError, ValueError) as error:
        fix = "" if isinstance(error, FileNotFoundError) else \
            f"; give the pose stage a {stage.network} model folder (docs/models.md)"
        report.error(("stages", index, "model"), f"stage '{stage.id}'", "model", f"{error}{fix}")


def _check_calib(report: _Report, index: int, stage: schema.Lift3D, graph_dir: Path, streams: list[str]) -> None:
    """The calibration files the lift3d stage reads when it is built, read the same way."""
    from streampose.stages.lift3d import Cameras

    try:
        Cameras(stage.calib, graph_dir, stage.assumed_hfov_deg, streams, logging.getLogger(__name__))
    except (OSError, ValueError) as error:
        report.error(("stages", index, "calib"), f"stage '{stage.id}'", "calib",
                     f"{error}; `streampose calib camera` makes calibration files (paths start at the graph "
                     f"file's folder)")


def _check_publisher(report: _Report, index: int, stage: schema.Publisher, graph_dir: Path) -> None:
    owner = f"stage '{stage.id}'"
    if stage.curve_secret_key is not None and not (graph_dir / stage.curve_secret_key).is_file():
        report.error(("stages", index, "curve_secret_key"), owner, "curve_secret_key",
                     f"no such file {graph_dir / stage.curve_secret_key}; make keys with `streampose keys DIR` "
                     f"and name DIR/publisher.key_secret")
    path = ("stages", index, "bind")
    scheme, _, rest = stage.bind.partition("://")
    if scheme == "ipc":
        folder = Path(rest).absolute().parent
        if not folder.is_dir():
            report.error(path, owner, "bind", f"folder {folder} of the ipc:// socket does not exist; create it")
        return
    host, _, port = rest.rpartition(":")
    example = "tcp://127.0.0.1:5555"
    if not host or not (port == "*" or port.isdigit() and int(port) <= 65535):
        report.error(path, owner, "bind", f"expected tcp://HOST:PORT (PORT a number, or * for any free one), "
                     f"got '{stage.bind}'; e.g. {example}")
        return
    _check_port(report, path, owner, "bind", "*" if host == "*" else host.strip("[]"), port)


def _check_metrics_bind(report: _Report, bind: str) -> None:
    path, owner, key = ("runtime", "metrics", "bind"), "runtime", "metrics.bind"
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535 or "://" in bind:
        report.error(path, owner, key, f"expected HOST:PORT without a scheme, got '{bind}'; e.g. 127.0.0.1:9100, "
                     f"or null to serve no metrics")
        return
    _check_port(report, path, owner, key, host.strip("[]"), port)


def _check_port(report: _Report, path: tuple, owner: str, key: str, host: str, port: str) -> None:
    """The host is an address of this machine; a port in use now is a warning, since it may be
    free by the time `run` binds (and `run` reports it then)."""
    if port in ("*", "0"):
        return
    try:
        addresses = socket.getaddrinfo(None if host in ("*", "", "0.0.0.0") else host, int(port),
                                       type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        if host in {name for _, name in socket.if_nameindex()}:  # ZeroMQ binds to interface names too
            return
        report.error(path, owner, key, f"unknown host '{host}'; use an address of this machine, e.g. 127.0.0.1")
        return
    # Both bind IPv4 when a name has several addresses (ZeroMQ's IPv6 is off by default).
    family, kind, proto, _, address = min(addresses, key=lambda a: a[0] != socket.AF_INET)
    probe = socket.socket(family, kind, proto)
    try:
        # ZeroMQ and the metrics server both set SO_REUSEADDR: a port in TIME_WAIT is free to them.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            report.warn(path, owner, key, f"port {port} on {host or '*'} is in use right now (another streampose "
                        f"running?); `run` will fail unless it is freed; stop that program or choose another port")
        else:
            report.error(path, owner, key, f"cannot bind {host}:{port}: {error.strerror}; use an address of this "
                         f"machine (e.g. 127.0.0.1) and a port above 1023")
    finally:
        probe.close()


# --------------------------------------------------------------------------- output

def _check_copied_sources(report: _Report, index: int, stage: schema.Recorder, graph: LoadedGraph) -> None:
    """A recorder that copies its sources' compressed video needs video: an image sequence has none."""
    from streampose.sources.images import is_image_pattern

    uris = {s.id: s.uri for s in graph.spec.sources}
    for stream in _streams_reaching(graph, stage.id):
        uri = uris[stream]
        if is_image_pattern(uri) or (graph.path.parent / uri).is_dir():
            report.error(("stages", index, "encode"), f"stage '{stage.id}'", "encode",
                         f"copy writes the source's compressed video, and source '{stream}' is an image sequence, "
                         f"which has none; give '{stream}' a recorder with encode: x264 (it encodes the frames)")


def _check_output_path(report: _Report, index: int, stage, output_dir: Path, streams: list[str]) -> None:
    """The sink's path template, by the sink's own checks: the recorder's and the clips'
    template classes, and the jsonl sink itself (building it opens no file: each stream's
    file is opened at its first frame)."""
    from streampose.runtime.stage import StageContext
    from streampose.sinks.clips import ClipPathTemplate
    from streampose.sinks.jsonl import JsonlStage
    from streampose.sinks.recorder import PathTemplate

    try:
        if stage.type == "jsonl":
            JsonlStage(stage.id, stage, StageContext(graph_dir=report.graph.path.parent, output_dir=output_dir,
                                                     streams=streams))
        else:
            (ClipPathTemplate if stage.type == "clips" else PathTemplate)(stage.path, output_dir, streams)
    except (ValueError, KeyError, IndexError) as error:  # KeyError, IndexError: a bad {field} in the template
        report.error(("stages", index, "path"), f"stage '{stage.id}'", "path", str(error))


def _output_dir_problem(folder: Path) -> str | None:
    """Why sinks could not write under `folder` (made when the graph starts), or None: it,
    or the nearest folder above it that exists, must be a folder this process can write in."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder; choose another output folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write in {existing} (permission denied); choose a folder you can write to"
    # The permission bits do not tell for root, nor in /proc, /sys or a read-only mount: make
    # (and remove at once) the folder a sink would make first.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".streampose-check-", dir=existing))
    except OSError as error:
        return f"cannot make folders in {existing} ({error.strerror}); choose a folder you can write to"
    return None
