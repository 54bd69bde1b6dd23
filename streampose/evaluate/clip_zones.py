"""Zones of the labelled clips, for `streampose evaluate falls`: the zones an installer would draw
for each camera that shows a bed, a sofa or a mat (streampose/evaluate/zones.yml; docs/falls.md).

The file maps a clip's file name to its zones, each written as in a graph's `sources[].zones`
(name, kind, polygon in normalised coordinates) and validated by the same schema.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from streampose.geometry.zones import Zone
from streampose.graph import schema
from streampose.yaml_file import read_yaml

ZONES_FILE = Path(__file__).with_name("zones.yml")
_ZONE_LISTS = TypeAdapter(dict[str, list[schema.Zone]])


def load(path: Path = ZONES_FILE) -> dict[str, tuple[Zone, ...]]:
    """Clip file name -> its zones; ValueError naming the file, the clip and the key when one is bad."""
    data = read_yaml(path, "zones file", ValueError) or {}
    try:
        checked = _ZONE_LISTS.validate_python(data)
    except ValidationError as error:
        raise ValueError("; ".join(f"{path}: {'.'.join(map(str, e['loc']))}: "
                                   f"{e['ctx']['error'] if e['type'] == 'value_error' else e['msg']}"
                                   for e in error.errors())) from None
    return {clip: tuple(z.to_zone() for z in zones) for clip, zones in checked.items()}


def as_graph(zones: tuple[Zone, ...]) -> list[dict]:
    """Zones as a graph source's `zones:` value."""
    return [{"name": z.name, "kind": z.kind, "polygon": z.polygon.tolist()} for z in zones]
