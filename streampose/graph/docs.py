"""docs/graphs.md's parameter reference, generated from the schema."""

from __future__ import annotations

import inspect
from typing import Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from streampose.graph import schema


def _type_name(annotation) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in get_args(annotation))
    if "Annotated[float" in str(annotation):   # polygon corners: lists of [x, y], each 0..1
        return "list of [x, y], each float (>= 0, <= 1)"
    text = getattr(annotation, "__name__", None) if get_origin(annotation) is None else None
    text = text or str(annotation)
    return text.replace("typing.", "").replace("NoneType", "null").replace(" | ", " or ")


def _rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        key = f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.append(f"| `{key}` | mapping | | {field.description or ''} |")
            rows.extend(_rows(annotation, key + "."))
            continue
        (item,) = get_args(annotation) if get_origin(annotation) is list else (None,)
        if isinstance(item, type) and issubclass(item, BaseModel):   # a list of mappings: zones
            rows.append(f"| `{key}` | list of mappings, each: | `[]` | {field.description or ''} |")
            rows.extend(_rows(item, key + "[]."))
            continue
        if field.default is not PydanticUndefined:
            default = f"`{field.default!r}`"
        elif field.default_factory is not None:
            default = f"`{field.default_factory()!r}`"
        else:
            default = "required"
        limits = [f"{sym} {getattr(m, attr)}" for m in field.metadata
                  for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if hasattr(m, attr)]
        kind = _type_name(annotation) + (f" ({', '.join(limits)})" if limits else "")
        rows.append(f"| `{key}` | {kind} | {default} | {field.description or ''} |")
    return rows


def _table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> str:
    header = ["| key | type | default | meaning |", "|---|---|---|---|"]
    return "\n".join(header + [r for r in _rows(model) if r.split("`")[1].split(".")[0] not in skip])


def markdown() -> str:
    parts = [
        "# Graph parameter reference",
        "",
        "Generated from `streampose/graph/schema.py` by `streampose schema`; do not edit by hand.",
        "",
        "## Sources (`sources:` list)",
        "",
        _table(schema.Source),
        "",
        "## Runtime (`runtime:`)",
        "",
        _table(schema.Runtime),
        "",
        "## Stages (`stages:` list)",
        "",
        "Every stage has these keys:",
        "",
        _table(schema.StageBase),
    ]
    common = set(schema.StageBase.model_fields)
    for type_name, model in schema.STAGE_TYPES.items():
        parts += ["", f"### `type: {type_name}`", "", inspect.cleandoc(model.__doc__ or ""), "",
                  _table(model, skip=tuple(common))]
    from streampose.plugins.registry import SHIPPED, load_plugin_class

    parts += ["", "## Shipped plugins (`type: plugin`, their `params:`)"]
    for name in SHIPPED:
        cls = load_plugin_class(name, None)
        parts += ["", f"### `plugin: {name}`", "", inspect.cleandoc(cls.__doc__ or ""), "", _table(cls.Params)]
    return "\n".join(parts) + "\n"
