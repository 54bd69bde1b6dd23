"""Training settings as a dataclass: its fields become command-line options and a YAML record.

Each field of a (frozen) dataclass gives one option, --field-name, of the field's type (int,
float, str, Path, bool as --flag/--no-flag, a tuple as several values), with the field's default
and its `help` metadata. The settings a run used are saved beside what it made
(`yaml_config.config_record`), so any model can be traced to how it was trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing


def add_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """An option for every field of `config_class`."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        kind = hints[field.name]
        option = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        text = field.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            parser.add_argument(option, type=item, nargs="+", default=default, help=f"{text} (default: "
                                f"{' '.join(map(str, default))})")
        else:
            parser.add_argument(option, type=kind, default=default, help=f"{text} (default: {default})")


def from_arguments(config_class: type, args: argparse.Namespace):
    """The `config_class` instance the parsed options describe."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)}
    return config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

