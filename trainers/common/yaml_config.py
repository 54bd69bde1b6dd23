"""Training settings as nested frozen dataclasses, read from a YAML file.

A trainer declares its settings as dataclasses (fields with defaults, `help` metadata, nested
dataclasses for sections). `load_yaml_config` reads a YAML mapping into them: unknown keys,
missing required keys and values of the wrong type are errors that name the file and the
dotted key. `--set section.key=value` style overrides (the value parsed as YAML) apply on top.
Relative paths resolve against the YAML file's folder, `~` expands. `config_record` turns the
result back into plain YAML, saved beside what the run made.

Supported field types: bool, int, float, str, Path, Literal[...], nested dataclasses, tuples
(tuple[X, ...] of any length, or tuple[X, Y] of fixed length) of those, and `X | None` (null).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from streampose.yaml_file import read_yaml


class ConfigError(ValueError):
    """A settings file or override is malformed; the message names the file and key."""


def load_yaml_config(config_class: type, path: str | Path, overrides: Sequence[str] = ()):
    """The `config_class` instance `path` describes, with `overrides` ("a.b=value") applied."""
    path = Path(path)
    data = read_yaml(path, "settings file", ConfigError)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    for override in overrides:
        _apply_override(data, override)
    return parse_config(config_class, data, str(path), base_dir=path.parent)


def parse_config(config_class: type, data: Mapping, source: str, base_dir: Path = Path(".")):
    """Build `config_class` from an already parsed mapping; errors name `source` and the key."""
    return _build(config_class, data, source, "", base_dir)


def config_record(config) -> dict:
    """A YAML-safe nested mapping of the settings (paths as strings, tuples as lists)."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value
    return plain(config)


def _apply_override(data: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. schedule.epochs=20")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: '{part}' is not a section")
    try:
        node[leaf] = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: the value is not valid YAML: {exc}") from None


def _build(config_class: type, data: Any, source: str, prefix: str, base_dir: Path):
    where = prefix.rstrip(".") or "(top level)"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: key '{where}': expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: key '{prefix}{unknown[0]}': unknown setting; "
                          f"{where} takes: {', '.join(fields)}")
    hints = typing.get_type_hints(config_class)
    values = {}
    for name, field in fields.items():
        key = prefix + name
        if name in data:
            values[name] = _convert(hints[name], data[name], source, key, base_dir)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: key '{key}': missing (required)")
    try:
        return config_class(**values)
    except (TypeError, ValueError) as exc:  # the dataclass's own checks (__post_init__)
        raise ConfigError(f"{source}: {where}: {exc}") from None


def _convert(kind, value: Any, source: str, key: str, base_dir: Path):
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: key '{key}': expected {expected}, got {value!r}")

    origin = typing.get_origin(kind)
    arguments = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType) and type(None) in arguments:
        if value is None:
            return None
        (kind,) = [a for a in arguments if a is not type(None)]
        return _convert(kind, value, source, key, base_dir)
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, source, key + ".", base_dir)
    if origin is typing.Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise fail("one of " + ", ".join(map(str, choices)))
        return value
    if origin is tuple:
        items = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        if len(items) == 2 and items[1] is Ellipsis:
            return tuple(_convert(items[0], v, source, f"{key}[{i}]", base_dir) for i, v in enumerate(value))
        if len(value) != len(items):
            raise fail(f"a list of {len(items)}")
        return tuple(_convert(t, v, source, f"{key}[{i}]", base_dir) for i, (t, v) in enumerate(zip(items, value)))
    if kind is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise fail("a path")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path
    raise TypeError(f"{key}: settings of type {kind} are not supported")
