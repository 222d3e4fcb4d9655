"""Reading a spec file, bounded and strict: what the file may be before any model sees it.

* at most :data:`MAX_SPEC_BYTES` (1 MB), UTF-8 text (a BOM is fine), not a directory;
* YAML is read with a loader that refuses duplicate keys (naming the key and its line), more than
  :data:`MAX_ALIASES` aliases, more than :data:`MAX_NODES` nodes once aliases and merges (``<<``) are
  expanded, recursive aliases, and nesting deeper than :data:`MAX_DEPTH`; so an alias bomb of a few hundred
  bytes is refused at once instead of growing to gigabytes later;
* JSON gets the same limits (duplicate keys, nodes, depth).

Problems are raised as ``ValueError`` with a message for the user; :func:`flows.spec.load.read_spec_file` names the
file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from tasks.kit import nesting

#: the largest spec file read
MAX_SPEC_BYTES = 1_000_000
#: nodes (mappings, lists, keys, scalars) of a spec, counting every use of an alias and every merged key
MAX_NODES = 50_000
#: how deep mappings and lists may nest (the same limit as every other document: tasks.kit.nesting)
MAX_DEPTH = nesting.MAX_DEPTH
#: aliases (``*name``) in one YAML spec
MAX_ALIASES = 100


class SpecFileError(ValueError):
    """The file cannot be a spec; the message says why (the caller adds the file name)."""


def read_text(path: Path) -> str:
    """The file's text: refused when it is a directory, missing, too big, binary or not UTF-8."""
    if path.is_dir():
        raise SpecFileError(f"{path} is a directory, not a spec file (give the YAML or JSON file itself)")
    if not path.is_file():
        raise SpecFileError(f"spec file not found: {path}")
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecFileError(f"the spec file is {size:,} bytes; a spec may be at most {MAX_SPEC_BYTES:,} bytes")
    data = path.read_bytes()[: MAX_SPEC_BYTES + 1]
    if b"\x00" in data:
        raise SpecFileError("the file is binary (it holds NUL bytes), not a YAML or JSON spec")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecFileError(f"the file is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                            "save it as UTF-8") from None


def expanded_size(root: Any, children: Callable[[Any], Iterable[Any]], what: str) -> int:
    """Nodes under ``root`` counting shared nodes at every use, without expanding them (memoised).

    Refuses more than MAX_NODES, nesting deeper than MAX_DEPTH and cycles (a node inside itself).
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children(node))
            if sizes[key] > MAX_NODES:
                raise SpecFileError(f"the {what} has more than {MAX_NODES:,} values once aliases and merges are "
                                    "expanded (an alias bomb?)")
            continue
        if key in sizes:
            continue
        if key in active:
            raise SpecFileError(f"the {what} refers to itself (a recursive alias)")
        if depth > MAX_DEPTH:
            raise SpecFileError(f"the {what} nests deeper than {MAX_DEPTH} levels")
        kids = list(children(node))
        if not kids:
            sizes[key] = 1
            continue
        active.add(key)
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in kids)
    return sizes[id(root)]


def _yaml_children(node: Node) -> Iterable[Node]:
    if isinstance(node, SequenceNode):
        return node.value
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return ()


#: libyaml's loader when PyYAML has it (about 50 times faster), else the pure-Python one
_FastLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _check_events(text: str) -> None:
    """Refuse too deep, too many values or aliases, from the parser's events (no recursion, nothing built).

    This runs first because composing nodes recurses (libyaml's composer in C, which a deep enough document
    crashes) and PyYAML builds every node before anything else could count them.
    """
    loader = _FastLoader(text)
    try:
        depth = values = aliases = 0
        while (event := loader.get_event()) is not None:
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                values += 1
                if depth > MAX_DEPTH:
                    raise SpecFileError(f"the spec nests deeper than {MAX_DEPTH} levels (line "
                                        f"{event.start_mark.line + 1 if event.start_mark else '?'})")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
            elif isinstance(event, yaml.ScalarEvent):
                values += 1
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise SpecFileError(f"the spec uses more than {MAX_ALIASES} aliases (*name)")
            if values > MAX_NODES:
                raise SpecFileError(f"the spec has more than {MAX_NODES:,} values")
    finally:
        loader.dispose()


class StrictLoader(_FastLoader):
    """PyYAML's safe loader with bounds and no silent duplicate keys (see the module's description)."""

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None:
            expanded_size(node, _yaml_children, "spec")
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise SpecFileError(f"duplicate key {key!r} on line {line} (first on line {seen[key]}); "
                                        "each key may appear once in a mapping")
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: the base constructor says so
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    _check_events(text)
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def json_children(value: Any) -> Iterable[Any]:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return value
    return ()


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise SpecFileError(f"duplicate key {key!r}; each key may appear once in an object")
        seen.add(key)
    return dict(pairs)


def load_json(text: str) -> Any:
    try:
        data = nesting.loads(text, "the spec", object_pairs_hook=_unique_keys)
    except nesting.NestingError as exc:
        raise SpecFileError(str(exc)) from None
    expanded_size(data, json_children, "spec")
    return data
