"""The lock files agree: pylock.toml (PEP 751) pins exactly the packages and versions of
requirements.txt, which `make test` installs from, with files whose hashes requirements.txt
allows, so either format installs what CI tested. (uv writes pylock.toml's wheels for the
platform it resolves on, Linux x86_64 here; requirements.txt lists every platform's hashes.)"""

from __future__ import annotations

import re
import tomllib

from conftest import REPO


def requirements_pins() -> dict[str, tuple[str, set[str]]]:
    """requirements.txt: package -> (version, its sha256 hashes)."""
    pins, name = {}, None
    for line in (REPO / "requirements.txt").read_text().splitlines():
        pinned = re.match(r"^([A-Za-z0-9._-]+)==([^ \\]+)", line)
        if pinned:
            name = pinned.group(1).lower().replace("_", "-")
            pins[name] = (pinned.group(2), set())
        for digest in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            pins[name][1].add(digest)
    return pins


def test_pylock_pins_what_requirements_txt_pins():
    lock = tomllib.loads((REPO / "pylock.toml").read_text())
    packages = {}
    for package in lock["packages"]:
        files = [package["sdist"]] if "sdist" in package else []
        files += package.get("wheels", [])
        packages[package["name"].lower()] = (package["version"], {f["hashes"]["sha256"] for f in files})
    pins = requirements_pins()
    assert len(pins) == 81 and all(hashes for _, hashes in pins.values())
    assert {name: version for name, (version, _) in packages.items()} == \
        {name: version for name, (version, _) in pins.items()}
    for name, (_, hashes) in packages.items():
        assert hashes and hashes <= pins[name][1], name
