"""Model folders and the search path that finds them.

A model folder is PaddleDetection's exported layout: `infer_cfg.yml` beside the network files.
A graph names a model by folder name (looked up on the search path) or by path.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from streampose.models.infer_cfg import InferConfig, load_infer_cfg
from streampose.models.zoo import ZooError, load_zoo

log = logging.getLogger(__name__)

# format -> (network file, weights file); checked in this order when a folder holds several.
NETWORK_FILES: dict[str, tuple[str, str | None]] = {
    "openvino": ("model.xml", "model.bin"),
    "paddle": ("model.pdmodel", "model.pdiparams"),
    "paddle3": ("model.json", "model.pdiparams"),
    "onnx": ("model.onnx", None),
}
CONFIG_FILE = "infer_cfg.yml"


class ModelNotFoundError(FileNotFoundError):
    """No model folder of that name on the search path."""


class ModelFolderError(ValueError):
    """A folder exists but is not a usable model folder."""


@dataclass(frozen=True)
class ModelFolder:
    """A model ready to load.

    path:    the folder.
    name:    its name (the folder's name).
    format:  "openvino" (model.xml + .bin), "paddle" (model.pdmodel + .pdiparams),
             "paddle3" (model.json + .pdiparams, Paddle 3 PIR) or "onnx" (model.onnx).
    network: the network file engines read.
    weights: the weights file, or None when the network file holds them (ONNX).
    config:  the validated infer_cfg.yml.
    """

    path: Path
    name: str
    format: str
    network: Path
    weights: Path | None
    config: InferConfig

    def require_task(self, task: str, description: str, error: type[ValueError]) -> None:
        """Raise `error` unless infer_cfg.yml says the network does `task` ("detector",
        "keypoints", ...); `description` ("a detector") names that task for people."""
        if self.config.task != task:
            raise error(f"model {self.name} is a {self.config.task} model (arch {self.config.arch}), "
                        f"not {description}")


def cache_root() -> Path:
    """streampose's cache: $XDG_CACHE_HOME/streampose, default ~/.cache/streampose."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "streampose"


# Models that ship inside the package (the default 3D lifter): found last, so a model of the
# same name in any other folder of the search path (a retrained one, say) wins.
BUILTIN_MODELS = Path(__file__).resolve().parent / "builtin"


def default_search_path(extra: list[Path] = ()) -> list[Path]:
    """Folders searched for models by name, in order: `extra` (--models), $STREAMPOSE_MODELS
    (an os.pathsep-separated list), ./models, the download cache (<cache>/models), then the
    models that ship with streampose."""
    env = [Path(p) for p in os.environ.get("STREAMPOSE_MODELS", "").split(os.pathsep) if p]
    path: list[Path] = []
    for folder in [*map(Path, extra), *env, Path("models"), cache_root() / "models", BUILTIN_MODELS]:
        folder = folder.expanduser().absolute()
        if folder not in path:
            path.append(folder)
    return path


def find_model(name_or_path: str, search_path: list[Path], relative_to: Path | None = None) -> ModelFolder:
    """The model folder named `name_or_path` (see `find_model_dir`), loaded."""
    return load_model_folder(find_model_dir(name_or_path, search_path, relative_to))


def find_model_dir(name_or_path: str, search_path: list[Path], relative_to: Path | None = None) -> Path:
    """The folder named `name_or_path`: a path (absolute, or containing a separator, or
    starting with "." or "~") is taken as is, a relative one against `relative_to` (a graph's
    folder) when given; a bare name is looked up in each folder of `search_path`, first match
    wins. Raises ModelNotFoundError listing every path tried."""
    if os.sep in name_or_path or "/" in name_or_path or name_or_path.startswith(("~", ".")):
        folder = Path(name_or_path).expanduser()
        if relative_to is not None and not folder.is_absolute():
            folder = relative_to / folder
        if not folder.is_dir():
            raise ModelNotFoundError(f"model folder {folder} does not exist")
        return folder
    tried = []
    for base in search_path:
        candidate = base / name_or_path
        if candidate.is_dir():
            return candidate
        tried.append(candidate)
    raise ModelNotFoundError(_not_found_message(name_or_path, tried))


def _not_found_message(name: str, tried: list[Path]) -> str:
    """One line: the paths searched, the nearest names found there or in the zoo, and how to get it.
    One line, because it ends up in `run` and `validate` error lines that name the graph key."""
    try:
        zoo = load_zoo()
    except ZooError:
        zoo = {}
    searched = ", ".join(map(str, tried)) or "nothing (the search path is empty)"
    folders = {candidate.parent for candidate in tried}
    found = {entry.name for folder in folders if folder.is_dir() for entry in folder.iterdir() if entry.is_dir()}
    close = [] if name in zoo else difflib.get_close_matches(name, sorted(found | set(zoo)), n=3, cutoff=0.6)
    suggestion = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    if name in zoo:
        fix = (f"download it with `streampose models pull {name}`, or add its folder with --models DIR "
               "or $STREAMPOSE_MODELS")
    elif close:
        fix = "correct the name, or add the folder holding it with --models DIR or $STREAMPOSE_MODELS"
    else:
        fix = "add the folder holding it with --models DIR or $STREAMPOSE_MODELS" + (
            f"; `streampose models pull NAME` can download: {', '.join(sorted(zoo))}" if zoo else "")
    return f"model '{name}' not found{suggestion}; searched: {searched}; {fix}"


def load_model_folder(folder: Path) -> ModelFolder:
    """Read a model folder: find its network files and load its infer_cfg.yml.

    A folder without infer_cfg.yml is accepted only when the model zoo has a built-in config for
    a model of that name (the YOLOX ONNX release ships without one); that is logged."""
    folder = folder.absolute()
    found = [(fmt, folder / net, folder / w if w else None)
             for fmt, (net, w) in NETWORK_FILES.items() if (folder / net).is_file()]
    if not found:
        expected = ", ".join(f"{net}" + (f" + {w}" if w else "") for net, w in NETWORK_FILES.values())
        raise ModelFolderError(f"{folder}: no network file; a model folder holds one of: {expected}")
    fmt, network, weights = found[0]
    if len(found) > 1:
        log.info("%s holds several network formats (%s); using %s", folder,
                 ", ".join(f for f, _, _ in found), fmt)
    if weights is not None and not weights.is_file():
        raise ModelFolderError(f"{folder}: {network.name} needs its weights file {weights.name}, which is missing")
    return ModelFolder(path=folder, name=folder.name, format=fmt, network=network, weights=weights,
                       config=_folder_config(folder))


def _folder_config(folder: Path) -> InferConfig:
    cfg_file = folder / CONFIG_FILE
    if cfg_file.is_file():
        return load_infer_cfg(cfg_file)
    try:
        entry = load_zoo().get(folder.name)
    except ZooError:
        entry = None
    if entry is None or entry.infer_cfg is None:
        raise ModelFolderError(f"{folder}: no {CONFIG_FILE}; write one (PaddleDetection's export format: arch, "
                               "Preprocess, label_list, NMS) beside the network")
    log.info("%s has no %s; using the model zoo's built-in config for '%s' (arch %s)",
             folder, CONFIG_FILE, entry.name, entry.config().arch)
    return entry.config()
