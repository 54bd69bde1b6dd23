"""Reading a graph file: YAML with line numbers, ${ENV} interpolation, --set
overrides, schema validation and the checks the schema cannot express (ids,
inputs, cycles).

Every error names the file, line and column, the stage or source and the key,
and for an unknown key suggests the nearest valid one.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from streampose.graph import schema

Path_ = tuple  # a location inside the document: keys and list indices


class GraphError(Exception):
    """A graph file is invalid; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class LoadedGraph:
    spec: schema.Graph
    path: Path
    # For each stage id, the ids (stages or sources) feeding it, resolved from
    # `inputs` and the defaults.
    inputs: dict[str, list[str]]
    # Where each key and value came from, so later checks (graph/check.py) point at
    # the same file:line:col (or --set) as the loader's own errors.
    locations: _Locations | None = None

    def where(self, path: Path_, key: bool = False) -> str:
        """'file:line:col' of the document path (e.g. ("stages", 0, "model")), or its --set."""
        return self.locations.where(path, key) if self.locations else str(self.path)


# --------------------------------------------------------------------------- reading YAML

# Bounds on what a graph file may make the reader do. The shipped graphs stay far below
# each; a hostile or broken file meets one in milliseconds instead of exhausting memory
# (an alias bomb), the stack (deep nesting, a recursive alias) or the CPU (a huge integer).
MAX_DEPTH = 32  # nested mappings and lists
MAX_ALIASES = 64  # *name references in one document
MAX_NODES = 20_000  # nodes of the document with every alias expanded
MAX_INT_CHARS = 24  # an integer's text, signs and underscores included (int64 needs 20)


class _Refused(Exception):
    """The reader refused a document: a one-line problem at a YAML mark, inside `path`
    (keys and indices) when known."""

    def __init__(self, mark: yaml.Mark, problem: str, path: Path_ = ()):
        self.mark, self.problem, self.path = mark, problem, path


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that composes at most MAX_DEPTH levels and MAX_ALIASES aliases and
    refuses an alias inside its own anchor, so that the node graph it makes is small and
    acyclic. (_Locations.record then bounds it with its aliases expanded.)"""

    def __init__(self, text: str):
        super().__init__(text)
        self.depth = 0
        self.aliases = 0
        self.open_anchors: set[str] = set()  # anchors whose node is being composed

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self.open_anchors:
                raise _Refused(event.start_mark, f"alias *{event.anchor} refers to itself (a recursive alias)")
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _Refused(event.start_mark, f"more than {MAX_ALIASES} aliases (*name); write the values out")
            return super().compose_node(parent, index)
        if self.depth >= MAX_DEPTH:
            raise _Refused(event.start_mark, f"nested more than {MAX_DEPTH} levels deep")
        anchor = getattr(event, "anchor", None)
        self.depth += 1
        if anchor is not None:
            self.open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1
            self.open_anchors.discard(anchor)


def _compose(text: str) -> yaml.Node | None:
    """The document's node graph (aliases shared, not yet expanded); _Refused or YAMLError."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _construct(node: yaml.Node | None) -> Any:
    """The Python value of a node graph that _Locations.record accepted, as yaml.safe_load makes it."""
    if node is None:
        return None
    loader = _BoundedLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _parse_value(text: str) -> Any:
    """A value given outside the file (${VAR}, --set), read with the file's bounds; ValueError
    naming the problem."""
    try:
        node = _compose(text)
        if node is not None:
            _Locations("").record(node)
        return _construct(node)
    except _Refused as refused:
        raise ValueError(refused.problem) from None
    except yaml.YAMLError as error:
        raise ValueError(getattr(error, "problem", None) or str(error).splitlines()[0]) from None


# --------------------------------------------------------------------------- locations

class _Locations:
    """Line/column of every key and value in a YAML document, by path."""

    def __init__(self, filename: str):
        self.filename = filename
        self.keys: dict[Path_, yaml.Mark] = {}
        self.values: dict[Path_, yaml.Mark] = {}
        self.overridden: dict[Path_, str] = {}
        self.ids: dict[Path_, str] = {}  # ("stages", 2) -> the item's id, to name it before the schema reads it

    def record(self, root: yaml.Node) -> None:
        """Record the mark of every key and value, walking aliases as the values they stand
        for; _Refused at a duplicate key, an integer over MAX_INT_CHARS, or past MAX_NODES."""
        todo: list[tuple[yaml.Node, Path_]] = [(root, ())]
        count = 0
        while todo:
            node, path = todo.pop()
            count += 1
            if count > MAX_NODES:
                # Named by the key holding the expansion: the outermost list index below a
                # source or stage item ends it.
                top = next((i for i, part in enumerate(path)
                            if isinstance(part, int) and not (i == 1 and path[0] in ("sources", "stages"))),
                           len(path))
                raise _Refused(self.keys.get(path[:top], node.start_mark), f"more than {MAX_NODES} values once "
                               f"aliases (*name) are expanded; write the values out", path[:top])
            self.values[path] = node.start_mark
            if isinstance(node, yaml.MappingNode):
                first: dict[tuple, yaml.Mark] = {}
                for key_node, value_node in node.value:
                    child = path + (key_node.value,)
                    if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                        seen = first.setdefault((key_node.tag, key_node.value), key_node.start_mark)
                        if seen is not key_node.start_mark:
                            raise _Refused(key_node.start_mark, f"duplicate key (first at line {seen.line + 1}); "
                                           f"a YAML mapping holds each key once", child)
                    self.keys[child] = key_node.start_mark
                    if len(path) == 2 and key_node.value == "id" and isinstance(value_node, yaml.ScalarNode):
                        self.ids[path] = value_node.value
                todo.extend((value, path + (key.value,)) for key, value in reversed(node.value))
            elif isinstance(node, yaml.SequenceNode):
                todo.extend((item, path + (i,)) for i, item in reversed(list(enumerate(node.value))))
            elif node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_INT_CHARS:
                raise _Refused(node.start_mark, f"integer of {len(node.value)} digits is too large", path)

    def where(self, path: Path_, key: bool = False) -> str:
        """'file:line:col' of the longest recorded prefix of `path`."""
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if prefix in self.overridden:
                return f"{self.overridden[prefix]}"
            table = self.keys if key and end == len(path) else self.values
            mark = table.get(prefix) or self.keys.get(prefix)
            if mark is not None:
                return f"{self.filename}:{mark.line + 1}:{mark.column + 1}"
        return self.filename


# --------------------------------------------------------------------------- interpolation

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, path: Path_, where: _Locations, problems: list[str], root: Any = None) -> Any:
    root = value if root is None else root
    if isinstance(value, dict):
        return {k: _interpolate(v, path + (k,), where, problems, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, path + (i,), where, problems, root) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        problems.append(f"{where.where(path)}: {_owner(root, path)[0]}: environment variable {name} is not set "
                        f"(set it, or write ${{{name}:-default}})")
        return ""

    result = _ENV.sub(substitute, value)
    if _ENV.fullmatch(value) and result:
        # A value that is one ${VAR} takes the type the variable's text reads as.
        try:
            return _parse_value(result)
        except ValueError as error:
            problems.append(f"{where.where(path)}: {_owner(root, path)[0]}: key '{_describe(_owner(root, path)[1])}': "
                            f"the value of {value} is not valid YAML ({error}); quote it in the variable, "
                            f"e.g. '\"...\"'")
    return result


# --------------------------------------------------------------------------- overrides

def _apply_override(data: dict, assignment: str, where: _Locations) -> None:
    """Apply one `a.b.c=value`; in sources/stages the second part is an id."""
    dotted, sep, text = assignment.partition("=")
    if not sep or not dotted:
        raise GraphError([f"--set {assignment}: expected KEY=VALUE, e.g. stages.pose.batch.max_size=16"])
    parts = dotted.split(".")
    node: Any = data
    path: list = []
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            index = next((j for j, item in enumerate(node) if isinstance(item, dict) and item.get("id") == part), None)
            if index is None:
                ids = [item.get("id") for item in node if isinstance(item, dict)]
                raise GraphError([f"--set {assignment}: no {path[-1][:-1]} with id '{part}'{_suggest(part, ids)}"])
            path.append(index)
            node = node[index]
            continue
        if not isinstance(node, dict):
            raise GraphError([f"--set {assignment}: '{'.'.join(parts[:i])}' is not a mapping"])
        node = node.setdefault(part, {})
        path.append(part)
    if not isinstance(node, dict):
        raise GraphError([f"--set {assignment}: '{'.'.join(parts[:-1])}' is not a mapping"])
    try:
        node[parts[-1]] = _parse_value(text) if text else ""
    except ValueError as error:
        raise GraphError([f"--set {assignment}: the value is not valid YAML ({error}); "
                          f"quote it: --set {dotted}='\"{text}\"'"]) from None
    where.overridden[tuple(path) + (parts[-1],)] = f"--set {assignment}"


# --------------------------------------------------------------------------- validation messages

def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _model_at(data: dict, path: Path_) -> type[BaseModel] | None:
    """The schema model describing the mapping at `path`, for key suggestions."""
    model: type[BaseModel] | None = schema.Graph
    node: Any = data
    i = 0
    while i < len(path) and model is not None:
        part = path[i]
        if part in ("sources", "stages") and model is schema.Graph:
            index = path[i + 1] if i + 1 < len(path) else None
            if index is None:
                return None
            node = node[part][index]
            model = schema.Source if part == "sources" else schema.STAGE_TYPES.get(node.get("type"))
            i += 2
            continue
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        node = node.get(part, {}) if isinstance(node, dict) else {}
        i += 1
    return model


def _owner(data: dict, path: Path_) -> tuple[str, Path_]:
    """('stage 'pose'', path within the stage) for a document path."""
    if len(path) >= 2 and path[0] in ("sources", "stages") and isinstance(path[1], int):
        kind = path[0][:-1]
        try:
            item = data[path[0]][path[1]]
            name = item.get("id") if isinstance(item, dict) else None
        except (IndexError, KeyError, TypeError):
            name = None
        if isinstance(name, str) and len(name) > 64:  # an id the schema refuses: one line stays short
            name = f"{name[:40]}..."
        label = f"{kind} '{name}'" if name else f"{kind} #{path[1] + 1}"
        return label, path[2:]
    if path and path[0] == "runtime":
        return "runtime", path[1:]
    return "graph", path


def _describe(path: Path_) -> str:
    return ".".join(str(p) for p in path)


def _format_error(error: dict, data: dict, where: _Locations) -> str:
    loc = tuple(error["loc"])
    if len(loc) >= 3 and loc[0] == "stages" and loc[2] in schema.STAGE_TYPES:
        loc = loc[:2] + loc[3:]  # drop pydantic's discriminator tag
    owner, inner = _owner(data, loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_at(data, loc[:-1])
        valid = list(model.model_fields) if model else []
        message = f"unknown key '{_describe(inner)}'{_suggest(loc[-1], valid)}"
        return f"{where.where(loc, key=True)}: {owner}: {message}"
    if kind == "union_tag_invalid":
        tag = error["ctx"]["tag"]
        message = (f"unknown stage type '{tag}'{_suggest(tag, schema.STAGE_TYPES)}; "
                   f"valid types: {', '.join(schema.STAGE_TYPES)}")
        return f"{where.where(loc + ('type',))}: {owner}: {message}"
    if kind == "union_tag_not_found":
        return f"{where.where(loc)}: {owner}: missing required key 'type'"
    if kind == "missing":
        return f"{where.where(loc[:-1])}: {owner}: missing required key '{_describe(inner)}'"
    if kind == "value_error":  # a schema validator's own message already shows the value
        key = f"key '{_describe(inner)}': " if inner else ""  # a check of several keys names them itself
        return f"{where.where(loc)}: {owner}: {key}{error['ctx']['error']}"
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) else f", got {got!r}"
    message = error["msg"][0].lower() + error["msg"][1:]
    return f"{where.where(loc)}: {owner}: key '{_describe(inner)}': {message}{shown}"


def _check_topology(spec: schema.Graph, where: _Locations) -> tuple[dict[str, list[str]], list[str]]:
    problems: list[str] = []
    seen: dict[str, str] = {}
    for kind, items in (("source", spec.sources), ("stage", spec.stages)):
        for i, item in enumerate(items):
            if item.id in seen:
                problems.append(f"{where.where((kind + 's', i, 'id'))}: {kind} '{item.id}': "
                                f"duplicate id (already used by a {seen[item.id]})")
            seen.setdefault(item.id, kind)
    if problems:
        return {}, problems
    source_ids = [s.id for s in spec.sources]
    stage_ids = [s.id for s in spec.stages]
    inputs: dict[str, list[str]] = {}
    for i, stage in enumerate(spec.stages):
        if stage.inputs is None:
            inputs[stage.id] = source_ids if i == 0 else [spec.stages[i - 1].id]
            continue
        inputs[stage.id] = list(stage.inputs)
        for j, name in enumerate(stage.inputs):
            if name in stage.inputs[:j]:
                problems.append(f"{where.where(('stages', i, 'inputs', j))}: stage '{stage.id}': input '{name}' "
                                f"is named twice (each frame would be processed twice)")
            elif name not in seen:
                problems.append(f"{where.where(('stages', i, 'inputs', j))}: stage '{stage.id}': input '{name}' "
                                f"is neither a source nor a stage{_suggest(name, source_ids + stage_ids)}")
            elif name == stage.id:
                problems.append(f"{where.where(('stages', i, 'inputs', j))}: stage '{stage.id}': "
                                f"a stage cannot feed itself")
    fed = {name for names in inputs.values() for name in names}
    for i, source in enumerate(spec.sources):
        if source.id not in fed:
            problems.append(f"{where.where(('sources', i, 'id'))}: source '{source.id}': feeds no stage "
                            f"(name it in a stage's inputs)")
    if not problems:
        cycle = _find_cycle(inputs, set(source_ids))
        if cycle:
            index = stage_ids.index(cycle[0])
            problems.append(f"{where.where(('stages', index, 'inputs'))}: stage '{cycle[0]}': inputs form a cycle: "
                            f"{' -> '.join(cycle + [cycle[0]])}")
    if not problems:
        problems += _check_branches(spec, inputs, where)
    return inputs, problems


def _check_branches(spec: schema.Graph, inputs: dict[str, list[str]], where: _Locations) -> list[str]:
    """A graph passes each frame on as one object, shared by every branch: it must reach each
    stage by one path, and where the graph branches, every branch holds only sinks, which read
    frames; the stages that change them (processors) form a chain before."""
    problems: list[str] = []
    stage_ids = [st.id for st in spec.stages]
    roles = {st.id: st.ROLE for st in spec.stages}
    downstream: dict[str, list[str]] = {}
    for stage_id in stage_ids:
        for name in inputs[stage_id]:
            downstream.setdefault(name, []).append(stage_id)
    paths: dict[str, dict[str, list[str]]] = {}  # stage -> source -> the inputs its frames come through

    def reach(node: str) -> dict[str, list[str]]:
        if node not in paths:
            paths[node] = {}
            for name in inputs[node]:
                for source in (reach(name) if name in inputs else {name: [name]}):
                    paths[node].setdefault(source, []).append(name)
        return paths[node]

    def changes_frames(node: str) -> bool:
        return roles[node] == "processor" or any(changes_frames(d) for d in downstream.get(node, []))

    for index, stage_id in enumerate(stage_ids):
        for source, through in reach(stage_id).items():
            if len(through) > 1:
                problems.append(f"{where.where(('stages', index, 'inputs'))}: stage '{stage_id}': frames of "
                                f"'{source}' reach it by {len(through)} paths (through {' and '.join(through)}): "
                                f"it would take each frame {len(through)} times; give it one of them as input "
                                f"(a graph is a chain of stages that fill in frames, with sinks branching off it)")
    sinks = ", ".join(name for name, params in schema.STAGE_TYPES.items() if params.ROLE == "sink")
    for node, children in downstream.items():
        changing = [child for child in children if changes_frames(child)] if len(children) > 1 else []
        if changing:
            index = stage_ids.index(changing[0])
            others = ", ".join(repr(child) for child in children if child != changing[0])
            who = "it" if roles[changing[0]] == "processor" else "a stage after it"
            problems.append(f"{where.where(('stages', index, 'inputs'))}: stage '{changing[0]}': '{node}' hands "
                            f"each frame to it and to {others} at once, and {who} changes the frame the branches "
                            f"share; chain the stages that change frames and branch off only sinks ({sinks}) "
                            f"after the last of them")
    return problems


def _find_cycle(inputs: dict[str, list[str]], sources: set[str]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in sources or state.get(node) == 2:
            return None
        if state.get(node) == 1:
            return path[path.index(node):]
        state[node] = 1
        path.append(node)
        for upstream in inputs.get(node, []):
            found = visit(upstream)
            if found:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in inputs:
        found = visit(node)
        if found:
            return found
    return None


def _check_plugins(spec: schema.Graph, where: _Locations, import_plugins: bool) -> list[str]:
    """Plugin stages: the plugin is found and, when its code may run (shipped plugins, and
    every plugin with `import_plugins`), its `params` fit the plugin's own schema."""
    from streampose.plugins.registry import SHIPPED, find_plugin, load_plugin_class

    problems = []
    for i, stage in enumerate(spec.stages):
        if stage.type != "plugin":
            continue
        try:
            find_plugin(stage.plugin, stage.module)
            if not (import_plugins or stage.plugin in SHIPPED):
                continue
            cls = load_plugin_class(stage.plugin, stage.module)
        except ValueError as error:
            key = "module" if stage.module else "plugin"
            problems.append(f"{where.where(('stages', i, key))}: stage '{stage.id}': {error}")
            continue
        try:
            cls.Params.model_validate(stage.params)
        except ValidationError as error:
            for e in error.errors():
                loc = ("stages", i, "params") + tuple(e["loc"])
                name = ".".join(["params", *map(str, e["loc"])])
                if e["type"] == "extra_forbidden":
                    message = f"unknown key '{name}'{_suggest(e['loc'][-1], cls.Params.model_fields)}"
                    problems.append(f"{where.where(loc, key=True)}: stage '{stage.id}': {message}")
                    continue
                text = e["ctx"]["error"] if e["type"] == "value_error" else e["msg"][0].lower() + e["msg"][1:]
                got = "" if isinstance(e.get("input"), (dict, list)) else f", got {e.get('input')!r}"
                problems.append(f"{where.where(loc)}: stage '{stage.id}': key '{name}': {text}{got}")
    return problems


# --------------------------------------------------------------------------- entry point

def load_graph(path: str | Path, overrides: list[str] = (), import_plugins: bool = False) -> LoadedGraph:
    """Read, interpolate, override and validate a graph file; raise GraphError. Plugins from
    outside streampose (`module:`, entry points) are only found, not imported (their code
    would run), unless `import_plugins`; `run` imports them, to check their params."""
    path = Path(path)
    text = _read_text(path)
    where = _Locations(str(path))
    try:
        node = _compose(text)
        if node is not None:
            where.record(node)
    except _Refused as refused:
        mark = refused.mark
        items: dict = {}  # the ids _owner looks up, by index
        for (kind, i), name in where.ids.items():
            items.setdefault(kind, {})[i] = {"id": name}
        owner, inner = _owner(items, refused.path)
        key = f"key '{_describe(inner)}': " if inner else ""
        raise GraphError([f"{path}:{mark.line + 1}:{mark.column + 1}: {owner}: {key}{refused.problem}"]) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        # A ReaderError (a control character, say) has a `reason` and no `problem`; its
        # str() spans several lines.
        problem = getattr(error, "problem", None) or getattr(error, "reason", None) or str(error).splitlines()[0]
        raise GraphError([f"{at}: invalid YAML: {problem}"]) from None
    data = _construct(node)
    if not isinstance(data, dict):
        raise GraphError([f"{path}:1:1: graph: expected a mapping with 'sources' and 'stages'"])

    problems: list[str] = []
    data = _interpolate(data, (), where, problems)
    for assignment in overrides:
        _apply_override(data, assignment, where)
    if problems:
        raise GraphError(problems)

    try:
        spec = schema.Graph.model_validate(data)
    except ValidationError as error:
        raise GraphError([_format_error(e, data, where) for e in error.errors()]) from None
    inputs, problems = _check_topology(spec, where)
    problems += _check_plugins(spec, where, import_plugins)
    if problems:
        raise GraphError(problems)
    return LoadedGraph(spec=spec, path=path.resolve(), inputs=inputs, locations=where)


def _read_text(path: Path) -> str:
    """The graph file's text; GraphError saying what is wrong with the file and what to do."""
    if path.is_dir():
        raise GraphError([f"{path}: is a folder, not a graph file; name a .yml file, e.g. {path / 'graph.yml'}"])
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GraphError([f"{path}: no such graph file; check the path (graphs to start from are in graphs/)"]) \
            from None
    except UnicodeDecodeError as error:
        raise GraphError([f"{path}: not a text file (byte {error.object[error.start]:#04x} at offset "
                          f"{error.start} is not UTF-8); a graph is YAML text saved as UTF-8"]) from None
    except OSError as error:
        raise GraphError([f"{path}: cannot read graph file: {error.strerror}; check its permissions"]) from None
