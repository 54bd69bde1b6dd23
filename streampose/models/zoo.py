"""The model zoo: official releases streampose can download, read from zoo.yml.

$STREAMPOSE_ZOO names another zoo file (a mirror, or a local server in tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streampose.models.infer_cfg import InferConfig, InferConfigError, parse_infer_cfg
from streampose.yaml_file import read_yaml

DEFAULT_ZOO = Path(__file__).with_name("zoo.yml")


class ZooError(ValueError):
    """The zoo file is malformed, or names no such model."""


@dataclass(frozen=True)
class ZooEntry:
    """One downloadable model.

    url:         archive (.tar, .tar.gz, .tgz, .zip) holding one model folder, or a bare network file.
    sha256:      expected checksum of the download (lowercase hex), or None when unknown.
    file:        for a bare network file: its name inside the model folder (e.g. model.onnx).
    infer_cfg:   the config for releases shipping without infer_cfg.yml, as a parsed mapping.
    """

    name: str
    url: str
    sha256: str | None
    description: str = ""
    file: str | None = None
    infer_cfg: dict[str, Any] | None = None

    def config(self) -> InferConfig:
        """The built-in infer_cfg of this entry (it must have one)."""
        return parse_infer_cfg(self.infer_cfg, f"built-in infer_cfg of '{self.name}' in the model zoo")


def zoo_path() -> Path:
    return Path(os.environ.get("STREAMPOSE_ZOO") or DEFAULT_ZOO)


def load_zoo(path: Path | None = None) -> dict[str, ZooEntry]:
    """All entries of the zoo file (default: $STREAMPOSE_ZOO, else the packaged zoo.yml)."""
    path = path or zoo_path()
    data = read_yaml(path, "model zoo file", ZooError)
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ZooError(f"{path}: expected a 'models' mapping of name -> entry")
    entries = {}
    for name, item in models.items():
        where = f"{path}: models.{name}"
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise ZooError(f"{where}: needs a 'url' string")
        unknown = item.keys() - {"url", "sha256", "description", "file", "infer_cfg"}
        if unknown:
            raise ZooError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        sha = item.get("sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64
                                    and all(c in "0123456789abcdefABCDEF" for c in sha)):
            raise ZooError(f"{where}.sha256: expected 64 hex digits or null, got {sha!r}")
        entry = ZooEntry(name=name, url=item["url"], sha256=sha.lower() if sha else None,
                         description=item.get("description", ""), file=item.get("file"),
                         infer_cfg=item.get("infer_cfg"))
        if entry.infer_cfg is not None:
            try:
                entry.config()
            except InferConfigError as exc:
                raise ZooError(f"{path}: {exc}") from None
        entries[name] = entry
    return entries
