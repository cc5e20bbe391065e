"""Bounds on a raw spec (file size, nesting, value count, string length) and the YAML reader
that enforces them while parsing."""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping

import yaml

from .errors import Issue, SpecError, dotted, short_repr

# Bounds on what a spec file can be, so reading and validating any input takes bounded time and
# memory. Real specs are a few KB, about six levels deep and a few hundred values; the bounds
# leave two orders of magnitude of room.
MAX_FILE_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_NODES = 100_000  # values after YAML aliases are expanded (an alias bomb expands exponentially)
MAX_STRING = 10_000  # characters of one string


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that names one key twice: YAML and JSON readers keep the last value and silently
    drop the first, so the spec would not say what its author wrote."""


def duplicate_key_message(key: Any, first_line: int | None = None) -> str:
    where = f" (first at line {first_line})" if first_line is not None else ""
    return f"key {short_repr(key)} appears twice in one mapping{where}; keep one (the later one would silently win)"


class _BoundedYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses, before constructing any Python object, documents
    nested deeper than MAX_DEPTH, aliases that refer to themselves, and documents whose aliases
    expand to more than MAX_NODES values (a kilobyte "billion laughs" file)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 (PyYAML's signature)
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` merges may be overridden by explicit keys, as YAML intends
                key = self.construct_object(key_node)
                if key in first:
                    raise DuplicateKeyError(None, None, duplicate_key_message(key, first[key].line + 1),
                                            key_node.start_mark)
                first[key] = key_node.start_mark
        return super().construct_mapping(node, deep)

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_NODES:
            raise yaml.composer.ComposerError(None, None, f"aliases expand to more than {MAX_NODES:,} values "
                                                          f"(an alias bomb?); write the values out", node.start_mark)
        return node


# YAML 1.2 (and JSON, TOML, Python) read 3e-4 as a number; PyYAML follows YAML 1.1, whose floats
# need a dot (3.0e-4), and reads 3e-4 as the string "3e-4". Specs are validated strictly (a string
# is not a number: base.SpecModel), so `lr: 3e-4` is read as the number its author meant.
_BoundedYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Values `node` stands for once every alias is expanded (memoised per node, so linear in
    the file; capped just above MAX_NODES so huge counts stay cheap)."""
    key = id(node)
    if key in memo:
        if memo[key] < 0:
            raise yaml.composer.ComposerError(None, None, "an alias refers to the node that contains it",
                                              node.start_mark)
        return memo[key]
    memo[key] = -1  # in progress: meeting it again means a cycle
    size = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        size = min(size + _expanded_size(child, memo), MAX_NODES + 1)
    memo[key] = size
    return size


def parse_yaml(text: str, name: str) -> Any:
    loader = _BoundedYamlLoader(text)
    loader.name = name  # marks in parse errors name the file, not "<unicode string>"
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def check_shape(data: Any, source: str = "", origin: str = "") -> None:
    """Refuse a raw spec too deep, too large or with strings too long to validate in bounded
    time, and mappings with non-string keys. Walks at most MAX_NODES values (an input of shared
    or cyclic references is refused, never expanded)."""
    stack: list[tuple[Any, tuple]] = [(data, ())]
    seen = 0
    while stack:
        node, parts = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise SpecError([Issue("", f"the spec holds more than {MAX_NODES:,} values; a spec is a few hundred "
                                       f"settings", origin)], source)
        if len(parts) > MAX_DEPTH:
            raise SpecError([Issue(dotted(parts[:MAX_DEPTH]), f"nests deeper than {MAX_DEPTH} levels; a spec is a "
                                                              f"few levels of sections", origin)], source)
        if isinstance(node, str) and len(node) > MAX_STRING:
            raise SpecError([Issue(dotted(parts), f"a string of {len(node):,} characters; at most {MAX_STRING:,} are "
                                          f"accepted", origin)], source)
        if isinstance(node, Mapping):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise SpecError([Issue(dotted(parts), f"key {short_repr(k)} is not a string; spec keys are names (quote "
                                                  f"it in YAML, e.g. \"{short_repr(k)}\":)", origin)], source)
                stack.append((v, parts + (k,)))
        elif isinstance(node, (list, tuple)):
            stack.extend((v, parts + (i,)) for i, v in enumerate(node))


def as_yaml_values(data: Mapping[str, Any], source: str = "") -> dict[str, Any]:
    """A copy of a mapping, checked first (check_shape: a deep or cyclic one would overflow the
    copy), with tuples as lists: what the same spec read from YAML holds. A Python mapping may write a list field as a tuple, and strict
    validation (base.SpecModel) takes only lists there. A value that cannot be copied (a
    generator, a lock, an open file) is refused naming its place; validation then names any
    other value of the wrong type."""
    def copy_node(node: Any, parts: tuple) -> Any:
        if isinstance(node, Mapping):
            return {k: copy_node(v, parts + (k,)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [copy_node(v, parts + (i,)) for i, v in enumerate(node)]
        try:
            return copy.deepcopy(node)
        except Exception as e:  # deepcopy raises TypeError, but a value's own __deepcopy__ may raise anything
            raise SpecError([Issue(dotted(parts), f"a {type(node).__name__} cannot be a spec value ({type(e).__name__}: "
                                                  f"{str(e)[:80]}); write a string, number, boolean, null, list or "
                                                  f"mapping")], source) from None
    check_shape(data, source)
    return copy_node(data, ())
