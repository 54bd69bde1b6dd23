"""Many daemons over one set of cameras: which sources this daemon runs.

`--shard I/N` (or STREAMPOSE_SHARD=I/N) makes this daemon the I-th of N (0-based). Each
source goes to exactly one daemon by rendezvous (highest random weight) hashing: every daemon
scores every (shard, source id) pair with the same hash and a source belongs to the shard
scoring highest for it. No daemon talks to another, and going from N to N+1 daemons moves
only the sources the new daemon wins (about 1/(N+1) of them), not a reshuffle of all.

I may be written as a name ending in -ORDINAL, so a Kubernetes StatefulSet's pod name
works unchanged: STREAMPOSE_SHARD=$(POD_NAME)/3 with POD_NAME streampose-2 is shard 2 of 3.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass

from streampose.graph.loader import LoadedGraph

ENV = "STREAMPOSE_SHARD"
_SHARD = re.compile(r"(?:.+-)?(\d+)/(\d+)")


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, source_id: str) -> bool:
        return owner(source_id, self.count) == self.index


def parse(text: str) -> Shard:
    """A Shard from "I/N" or "NAME-I/N"; ValueError with the fix otherwise."""
    match = _SHARD.fullmatch(text.strip())
    if not match:
        raise ValueError(f"shard {text!r}: expected I/N (e.g. 0/2) or a StatefulSet pod name and N "
                         f"(e.g. streampose-1/2)")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise ValueError(f"shard {text!r}: the index must be from 0 to N-1 and N at least 1")
    return Shard(index, count)


def from_environment() -> Shard | None:
    """The shard STREAMPOSE_SHARD names, or None when it is unset or empty."""
    text = os.environ.get(ENV, "")
    return parse(text) if text else None


def owner(source_id: str, count: int) -> int:
    """The shard (0..count-1) that runs `source_id`: the highest of the hashes of (shard, id)."""
    def weight(shard: int) -> int:
        return int.from_bytes(hashlib.sha256(f"{shard}\0{source_id}".encode()).digest()[:8], "big")
    return max(range(count), key=weight)


def select(graph: LoadedGraph, shard: Shard) -> LoadedGraph:
    """`graph` with only the sources `shard` owns; stages lose the inputs that were those sources."""
    kept = [source for source in graph.spec.sources if shard.owns(source.id)]
    gone = {source.id for source in graph.spec.sources} - {source.id for source in kept}
    spec = graph.spec.model_copy(update={"sources": kept})
    inputs = {stage: [name for name in names if name not in gone] for stage, names in graph.inputs.items()}
    return dataclasses.replace(graph, spec=spec, inputs=inputs)
