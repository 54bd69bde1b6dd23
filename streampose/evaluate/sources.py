"""Where each labelled clip comes from, for leave-one-source-out cross-validation."""

from __future__ import annotations

import re
from pathlib import Path


def clip_sources(sources_md: Path, names: list[str]) -> dict[str, str]:
    """Clip -> the repository it came from (SOURCES.md's table beside the labels); clips not
    in it (the project's first nine, of no stated repository) are one source, "original"."""
    repos = {}
    for line in sources_md.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and re.search(r"\.(mp4|avi|mkv|mov)$", cells[0]):
            repos[cells[0]] = cells[1]
    return {n: repos.get(n, "original") for n in names}
