"""Where plugins come from: the shipped ones by name, installed ones by entry point, any
class by `module:` (unless switched off). Finding a plugin runs none of its code; loading
it imports its module. Used by the graph loader (to check a plugin stage's `params`) and by
the plugin stage, so it imports nothing of the runtime."""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import os
from importlib.metadata import entry_points

from streampose.plugins.base import Plugin

# The plugins streampose ships, by the name a graph uses.
SHIPPED = {
    "fall": "streampose.plugins.fall:FallDetector",
    "reps": "streampose.plugins.reps:RepCounter",
    "hand_raised": "streampose.plugins.hand_raised:HandRaised",
}
ENTRY_POINT_GROUP = "streampose.plugins"
# `module:` imports whatever module a graph file names; an operator who runs graph files
# from others sets this to 0 so that only shipped and installed (entry point) plugins load.
ALLOW_MODULES_ENV = "STREAMPOSE_ALLOW_MODULES"
def modules_allowed() -> bool:
    return os.environ.get(ALLOW_MODULES_ENV, "1") != "0"


def find_plugin(name: str | None, module: str | None) -> str:
    """The `package.module:ClassName` that a graph's `plugin:` (shipped or entry point) or
    `module:` names, found without importing it, so that no plugin code runs; ValueError
    saying what is wrong."""
    if (name is None) == (module is None):
        raise ValueError("give exactly one of 'plugin' (a name) or 'module' (package.module:ClassName)")
    if name in SHIPPED:
        return SHIPPED[name]
    if name is not None:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not found:
            installed = sorted(SHIPPED) + sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
            raise ValueError(f"unknown plugin '{name}'; available: {', '.join(installed)} "
                             f"(or name your class with module: package.module:ClassName)")
        target, what = found[0].value, f"entry point {name} ({found[0].value})"
    else:
        if not modules_allowed():
            raise ValueError(f"module '{module}': module plugins are switched off ({ALLOW_MODULES_ENV}=0); "
                             f"use a shipped or installed plugin (plugin: NAME)")
        target, what = module, f"module '{module}'"
    module_name, _, class_name = target.partition(":")
    if not all(part.isidentifier() for part in module_name.split(".") + class_name.split(".")):
        raise ValueError(f"{what}: expected package.module:ClassName")
    if _module_spec(module_name) is None:
        raise ValueError(f"cannot load plugin {target}: no module named '{module_name}'")
    return target


def _module_spec(dotted: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of module `dotted`, looked up package by package: importlib.util.find_spec
    would import (run) the packages above it."""
    spec = importlib.util.find_spec(dotted.split(".")[0])
    for depth in range(2, dotted.count(".") + 2):
        if spec is None or spec.submodule_search_locations is None:
            return None
        name = ".".join(dotted.split(".")[:depth])
        spec = importlib.machinery.PathFinder.find_spec(name, list(spec.submodule_search_locations))
    return spec


def load_plugin_class(name: str | None, module: str | None) -> type[Plugin]:
    """Import the class a graph names with `plugin:` or `module:` (find_plugin says which);
    ValueError when it cannot be imported or is no Plugin."""
    target = find_plugin(name, module)
    module_name, _, class_name = target.partition(":")
    try:
        cls = functools.reduce(getattr, class_name.split("."), importlib.import_module(module_name))
    except Exception as error:  # any error of the plugin's own module code, at import
        raise ValueError(f"cannot load plugin {target}: {type(error).__name__}: {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        what = target if module or name in SHIPPED else f"entry point {name}"
        raise ValueError(f"{what} is not a streampose.plugins.base.Plugin subclass")
    return cls
