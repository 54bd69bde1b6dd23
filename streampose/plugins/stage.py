"""The `plugin` stage: runs one plugin over each frame's tracked persons. Their per-track
states live in the stage's store (runtime/state.py): created on a track's first appearance,
freed with it (`end_track`, whose events go out with the frame that ended the track, or on
their own path when no frame did: a stream gap, eviction, shutdown)."""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import os
from importlib.metadata import entry_points
from pydantic import ValidationError

from streampose.frame import Event, Frame
from streampose.graph import schema
from streampose.plugins.base import Plugin
from streampose.runtime.stage import Stage, StageContext

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
# Most track states per stream; beyond it the least recently seen track's state is ended. A
# tracker ends its tracks, so this only bounds memory when something upstream never does.
MAX_TRACKS = 1024


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


class PluginStage(Stage):
    def __init__(self, stage_id: str, params: schema.Plugin, context: StageContext):
        super().__init__(stage_id, params, context)
        cls = load_plugin_class(params.plugin, params.module)
        if params.plugin not in SHIPPED:
            # Code from outside streampose now runs in the daemon: say whose.
            self.log.info("imported plugin %s (%s)", find_plugin(params.plugin, params.module),
                          f"module: in the graph; {ALLOW_MODULES_ENV}=0 refuses these" if params.module
                          else f"entry point '{params.plugin}'")
        try:
            plugin_params = cls.Params.model_validate(params.params)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(['params', *map(str, e['loc'])])}: "
                                 f"{e['ctx']['error'] if e['type'] == 'value_error' else e['msg'].lower()}"
                                 for e in error.errors())
            raise ValueError(f"plugin {cls.__name__}: {problems}") from None
        self.plugin = cls(plugin_params)
        self.states = self.per_track(self.plugin.new_track, MAX_TRACKS, on_drop=self._end)

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            self.states.follow(frame)  # ended tracks and timeline breaks first: their last events lead
            for i, track_id in enumerate(frame.persons.track_ids.tolist()):
                if track_id < 0:
                    continue
                if self.states.peek(frame.stream, track_id) is None:
                    self._continue(frame, i, track_id)
                self._emit(frame, self.plugin.on_person(frame, i, self.states.get(frame, track_id)))

    def _continue(self, frame: Frame, i: int, track_id: int) -> None:
        """A new track: the plugin may name a lost track it continues, whose state it takes."""
        present = set(frame.persons.track_ids.tolist())
        lost = {key: state for key, state in self.states.live(frame.stream).items() if key not in present}
        old = self.plugin.continues(frame, i, lost) if lost else None
        if old is not None:
            self.states.move(frame, old, track_id)

    def _end(self, stream: str, track_id: int, state, frame: Frame | None) -> None:
        self._emit(frame, self.plugin.end_track(frame, track_id, state), stream)

    def _emit(self, frame: Frame | None, events: list[Event], stream: str = "") -> None:
        for event in events:
            self.context.metrics.inc("events", kind=event.kind, stream=event.stream)
            self.log.info("%s %s track %d at %.2f s, score %.2f %s", event.stream, event.kind, event.track_id,
                          event.media_time, event.score, event.data)
        if frame is not None:
            frame.events.extend(events)
        else:
            self.emit(stream, events)

    def close(self) -> None:
        self.plugin.close()

    @property
    def live_states(self) -> int:
        return len(self.states)
