"""The lock and what installs from it agree. uv.lock is the resolution (`make lock`), which
`make demo` and `make test` install with `uv sync --locked`; requirements-tools.txt and
requirements-build.txt (what they install with pip first: pip, uv and the build tools) and
requirements-demo.txt (the Dockerfile's) are its exports in pip's hash-checked format. Each must
pin exactly the packages the lock resolves for what it installs, at the locked versions, with
hashes of the locked files, so a lock changed without exporting again fails here."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest

from conftest import REPO


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def exported_pins(file_name: str) -> dict[str, tuple[str, set[str]]]:
    """A requirements file: package -> (version, its sha256 hashes)."""
    pins, name = {}, None
    for line in (REPO / file_name).read_text().splitlines():
        pinned = re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", line)
        if pinned:
            name = canonical(pinned.group(1))
            pins[name] = (pinned.group(2), set())
        for digest in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            pins[name][1].add(digest)
    return pins


def locked() -> dict[str, dict]:
    """uv.lock: package -> its [[package]] table."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return {canonical(package["name"]): package for package in lock["package"]}


def needed(packages: dict[str, dict], roots: list[dict]) -> set[str]:
    """The packages `roots` (uv.lock dependency entries) pull in, extras followed."""
    seen, todo = set(), list(roots)
    while todo:
        entry = todo.pop()
        name = canonical(entry["name"])
        package = packages[name]
        for extra in entry.get("extra", []):
            todo += package.get("optional-dependencies", {}).get(extra, [])
        if name not in seen:
            seen.add(name)
            todo += package.get("dependencies", [])
    return seen


def file_hashes(package: dict) -> set[str]:
    files = [package["sdist"]] if "sdist" in package else []
    files += package.get("wheels", [])
    return {f["hash"].removeprefix("sha256:") for f in files}


@pytest.mark.parametrize("file_name, extras, group", [
    ("requirements-demo.txt", [], None),
    ("requirements-tools.txt", None, "tools"),
    ("requirements-build.txt", None, "build"),
])
def test_each_export_pins_what_the_lock_resolves(file_name, extras, group):
    packages = locked()
    project = packages["streampose"]
    if group:
        roots = project["dev-dependencies"][group]
    else:
        roots = list(project["dependencies"])
        for extra in extras:
            roots += project["optional-dependencies"][extra]
    pins = exported_pins(file_name)
    assert set(pins) == needed(packages, roots)
    for name, (version, hashes) in pins.items():
        assert version == packages[name]["version"], name
        assert hashes and hashes <= file_hashes(packages[name]), name


def test_the_debian_packages_the_tests_use_are_installed_as_locked():
    """debian-packages.lock pins the test servers' Debian packages (`make test` installs it first):
    every package the Makefile names is locked, and each locked package is installed at its
    locked version, so the suite runs on what it passed on."""
    lock = dict(line.split("=", 1) for line in (REPO / "debian-packages.lock").read_text().split())
    makefile = (REPO / "Makefile").read_text()
    named = re.search(r"^TEST_PACKAGES := ((?:.*\\\n)*.*)$", makefile, re.M).group(1).replace("\\\n", " ").split()
    assert "chromium" in named and set(named) <= set(lock)
    installed = subprocess.run(["dpkg-query", "-W", "-f", "${Package}=${Version}\n", *lock], capture_output=True,
                               text=True).stdout.split()
    assert dict(line.split("=", 1) for line in installed) == lock
