"""`streampose models pull`: download a release from the model zoo into the model cache.

The download is checked against the zoo's sha256 and unpacked beside the destination; only a
complete, loadable model folder is moved into place (one rename), so a failed or interrupted
pull leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import yaml

from streampose.models.folder import CONFIG_FILE, NETWORK_FILES, ModelFolder, cache_root, load_model_folder
from streampose.models.zoo import ZooEntry, ZooError, load_zoo, zoo_path

log = logging.getLogger(__name__)

CHUNK = 1 << 16


class PullError(RuntimeError):
    """A download failed, did not verify, or did not hold a model folder."""


def pull(name: str, dest_root: Path | None = None, *, force: bool = False, progress: bool = True,
         timeout_s: float = 30.0) -> ModelFolder:
    """Download zoo model `name` into `dest_root`/`name` (default <cache>/models) and return it.
    An existing folder is kept unless `force`."""
    zoo = load_zoo()
    entry = zoo.get(name)
    if entry is None:
        raise ZooError(f"'{name}' is not in the model zoo {zoo_path()}; known: {', '.join(sorted(zoo))}")
    dest_root = dest_root or cache_root() / "models"
    target = dest_root / name
    if target.exists() and not force:
        log.info("%s already present at %s (use --force to download again)", name, target)
        return load_model_folder(target)
    dest_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.pull-", dir=dest_root) as tmp:
        work = Path(tmp)
        download = work / "download"
        digest = _download(entry.url, download, name, progress, timeout_s)
        if entry.sha256 is None:
            log.warning("%s: the model zoo lists no sha256, so the download is not verified (its sha256: %s)",
                        name, digest)
        elif digest != entry.sha256:
            raise PullError(f"{name}: sha256 mismatch for {entry.url}: expected {entry.sha256}, got {digest}; "
                            "nothing was installed")
        folder = _unpack(entry, download, work / "unpacked")
        if not (folder / CONFIG_FILE).exists() and entry.infer_cfg is not None:
            (folder / CONFIG_FILE).write_text(yaml.safe_dump(entry.infer_cfg, sort_keys=False), encoding="utf-8")
        load_model_folder(folder)  # refuse to install something that would not load
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
    log.info("%s installed at %s", name, target)
    return load_model_folder(target)


def _download(url: str, path: Path, name: str, progress: bool, timeout_s: float) -> str:
    sha = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, path.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, shown = 0, -1
            while chunk := response.read(CHUNK):
                out.write(chunk)
                sha.update(chunk)
                done += len(chunk)
                if progress and total:
                    percent = done * 100 // total
                    if percent != shown:
                        shown = percent
                        bar = "#" * (percent // 4)
                        sys.stderr.write(f"\r{name} [{bar:<25}] {percent:3d}% {done / 1e6:.1f}/{total / 1e6:.1f} MB")
                        sys.stderr.flush()
            if progress and total:
                sys.stderr.write("\n")
    except (urllib.error.URLError, OSError) as exc:
        raise PullError(f"{name}: cannot download {url}: {exc}") from None
    if total and done != total:
        raise PullError(f"{name}: download of {url} ended after {done} of {total} bytes; nothing was installed")
    return sha.hexdigest()


def _unpack(entry: ZooEntry, download: Path, into: Path) -> Path:
    """Unpack the download into `into` and return the model folder inside it."""
    into.mkdir()
    if entry.file is not None:
        folder = into / entry.name
        folder.mkdir()
        shutil.copyfile(download, folder / entry.file)
        return folder
    try:
        if tarfile.is_tarfile(download):
            with tarfile.open(download) as archive:
                archive.extractall(into, filter="data")  # refuses absolute paths, .., links out of `into`
        elif zipfile.is_zipfile(download):
            with zipfile.ZipFile(download) as archive:
                for member in archive.namelist():
                    resolved = (into / member).resolve()
                    if not resolved.is_relative_to(into.resolve()):
                        raise PullError(f"{entry.name}: archive member {member!r} would land outside the folder")
                archive.extractall(into)
        else:
            raise PullError(f"{entry.name}: {entry.url} is neither a tar nor a zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise PullError(f"{entry.name}: cannot unpack {entry.url}: {exc}") from None
    networks = {net for net, _ in NETWORK_FILES.values()}
    folders = sorted({p.parent for p in into.rglob("*") if p.name in networks})
    if len(folders) != 1:
        raise PullError(f"{entry.name}: expected one model folder in {entry.url}, found "
                        f"{len(folders) or 'none'}" + (f": {[str(f.relative_to(into)) for f in folders]}" if folders
                                                        else f" (no {', '.join(sorted(networks))})"))
    return folders[0]
