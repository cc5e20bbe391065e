"""Reading specs: YAML / TOML / JSON files, Python modules, mappings; overrides and profiles."""

from __future__ import annotations

import copy
import json
import re
import runpy
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import ValidationError

from .errors import Issue, SpecError, dotted, from_validation_error, short_repr
from .experiment import Experiment, cluster_rules
from .modalities import anchor_encoder_paths
from .pretrained import anchor_from_hf
from .system import Cluster

SUFFIXES = (".yaml", ".yml", ".toml", ".json", ".py")

# Bounds on what a spec file can be, so reading and validating any input takes bounded time and
# memory. Real specs are a few KB, about six levels deep and a few hundred values; the bounds
# leave two orders of magnitude of room.
MAX_FILE_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_NODES = 100_000  # values after YAML aliases are expanded (an alias bomb expands exponentially)
MAX_STRING = 10_000  # characters of one string


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The raw mapping in a spec file, before validation."""
    p = Path(path)
    src = str(p)
    if not p.is_file():
        raise SpecError([Issue("", f"no spec file at {src}; give a path to a {'/'.join(SUFFIXES)} file")], src)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise SpecError([Issue("", f"unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")], src)
    data = _from_python(p) if suffix == ".py" else _parse_text(_read_text(p), suffix, src)
    if data is None:
        raise SpecError([Issue("", "the file is empty; a spec is a mapping, e.g. `name: my-run` with "
                                   "`modalities:` and `data:` sections (see examples/)")], src)
    if not isinstance(data, dict):
        raise SpecError([Issue("", f"the spec must be a mapping at the top level (`name: ...`, `modalities: ...`), "
                                   f"got a {type(data).__name__}")], src)
    check_shape(data, src)
    return data


def _read_text(p: Path) -> str:
    src = str(p)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise SpecError([Issue("", f"cannot read the file: {e.strerror or e}")], src) from None
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError([Issue("", f"the file is larger than {MAX_FILE_BYTES // 1024} KiB; a spec is a few KB of "
                                   f"settings (keep data and weights in separate files)")], src)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SpecError([Issue("", f"the file is not UTF-8 text: byte {raw[e.start]:#04x} at line {line} "
                                   f"(offset {e.start}); save it as UTF-8")], src) from None


def _parse_text(text: str, suffix: str, src: str) -> Any:
    try:
        if suffix in (".yaml", ".yml"):
            return _yaml(text, src)
        if suffix == ".toml":
            return tomllib.loads(text)
        return json.loads(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise SpecError([Issue("", f"cannot parse the file: {_one_line(e)}; fix the syntax there")], src) from None
    except RecursionError:
        raise SpecError([Issue("", f"the file nests deeper than {MAX_DEPTH} levels; a spec is a few levels of "
                                   f"sections")], src) from None
    except ValueError as e:  # Python refuses integers of more than 4,300 digits
        raise SpecError([Issue("", f"cannot read a value in the file: {_value_problem(e)}")], src) from None


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

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_NODES:
            raise yaml.composer.ComposerError(None, None, f"aliases expand to more than {MAX_NODES:,} values "
                                                          f"(an alias bomb?); write the values out", node.start_mark)
        return node


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


def _yaml(text: str, name: str) -> Any:
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


def _from_python(p: Path) -> dict[str, Any]:
    try:
        ns = runpy.run_path(str(p))
    except (Exception, SystemExit) as e:  # a user's module failing to import is a spec error, not a crash
        raise SpecError([Issue("", f"running the module failed: {type(e).__name__}: {_one_line(e)[:500]}")],
                        str(p)) from None
    if "experiment" not in ns:
        raise SpecError([Issue("", "a Python spec must define `experiment` (an Experiment or a dict)")], str(p))
    obj = ns["experiment"]
    if isinstance(obj, Experiment):
        return obj.model_dump(mode="json")
    if isinstance(obj, Mapping):
        return dict(obj)
    raise SpecError([Issue("experiment", f"expected an Experiment or a dict, got {type(obj).__name__}")], str(p))


@dataclass(frozen=True)
class Override:
    """One `--set KEY=VALUE`: its text, its key path and how much of that path it created (the
    keys it added are its own, so an unknown key there is the override's problem, not the file's)."""

    text: str
    parts: tuple[str | int, ...]  # ints index lists: data.mixture[0].weight
    created_from: int  # index into parts of the first key that did not exist before

    def owns(self, path: str) -> bool:
        """Whether an issue at `path` comes from this override's value or the keys it added."""
        key = dotted(self.parts)
        if path == key or path.startswith(key + ".") or path.startswith(key + "["):
            return True
        return any(path == dotted(self.parts[: i + 1]) for i in range(self.created_from, len(self.parts)))


_KEY_SEGMENT = re.compile(r"([^\[\]]*)((?:\[[^\[\]]*\])*)")


def _key_parts(key: str, origin: str) -> list[str | int]:
    """`data.mixture[0].weight` -> ["data", "mixture", 0, "weight"]; `data.mixture.0.weight` keeps
    "0" a string, an index once the walk finds a list there (it could name a mapping's key)."""
    parts: list[str | int] = []
    for segment in key.strip().split("."):
        m = _KEY_SEGMENT.fullmatch(segment)
        if m is None:
            raise SpecError([Issue(dotted(parts), f"{_clip(segment)!r} is not a key; write a name, optionally "
                                                  f"followed by list indices, e.g. data.mixture[0].weight=2", origin)])
        if m.group(1):
            parts.append(m.group(1))
        for index in re.findall(r"\[([^\]]*)\]", m.group(2)):
            if not index.isdecimal() or len(index) > 9:
                raise SpecError([Issue(dotted(parts), f"[{_clip(index, 20)}] is not a list index; use a whole "
                                                      f"number from 0, e.g. data.mixture[0].weight=2", origin)])
            parts.append(int(index))
    return parts


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """`a.b.c=VALUE` -> (["a","b","c"], value); `a.b[1].c=VALUE` -> (["a","b",1,"c"], value).
    VALUE is read as YAML, so 2 is an int, true a bool, [1, 2] a list and "4M" stays a string for
    the unit parsers."""
    origin = f"--set {_clip(text)}"
    if "=" not in text:
        raise SpecError([Issue("", f"{_clip(text)!r} is not KEY=VALUE; write e.g. backbone.layers=4", origin)])
    key, raw = text.split("=", 1)
    parts = _key_parts(key, origin)
    if not parts or not isinstance(parts[0], str):
        raise SpecError([Issue("", "the key is empty; write e.g. backbone.layers=4", origin)])
    try:
        value = _yaml(raw, origin) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise SpecError([Issue(dotted(parts), f"the value nests deeper than {MAX_DEPTH} levels", origin)]) from None
    except ValueError as e:
        raise SpecError([Issue(dotted(parts), f"cannot read the value: {_value_problem(e)}", origin)]) from None
    check_shape(value, origin=origin)
    return parts, value


def deep_merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    return _apply_overrides(copy.deepcopy(data), overrides)[0]


def _apply_overrides(out: dict[str, Any], overrides: Iterable[str]) -> tuple[dict[str, Any], list[Override]]:
    """Apply in place: `out` is the loader's own copy (copying it again cost as much as checking it)."""
    applied: list[Override] = []
    for text in overrides:
        parts, value = parse_override(text)
        applied.append(_set_path(out, parts, value, f"--set {_clip(text)}"))
    return out, applied


def _set_path(data: dict[str, Any], parts: list[str | int], value: Any, origin: str) -> Override:
    """Set `value` at `parts` in `data`, creating missing sections; list entries must exist."""
    node: Any = data
    created, walked = len(parts), []
    for i, k in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            k = _list_index(node, k, walked, parts, origin)
        elif isinstance(k, int):
            raise SpecError([Issue(dotted(walked), f"is a section, not a list: it has no entry [{k}]; "
                                                   f"cannot set {dotted(walked + parts[i:])}", origin)])
        walked.append(k)
        if last:
            if isinstance(node, dict) and k not in node:
                created = min(created, i)
            node[k] = value
            break
        nxt = node[k] if isinstance(node, list) else node.get(k)
        if nxt is None and isinstance(node, dict):
            created = min(created, i)
            nxt = node[k] = {}
        elif not isinstance(nxt, (dict, list)):
            raise SpecError([Issue(dotted(walked), f"is a {_type_name(nxt)}, not a section or a list; "
                                                   f"cannot set {dotted(walked + parts[i + 1:])}", origin)])
        node = nxt
    return Override(origin.removeprefix("--set "), tuple(walked), created)


def _list_index(items: list, key: str | int, walked: list, parts: list, origin: str) -> int:
    """`key` as an index of the existing entries of `items` (an override changes an entry; adding
    one is writing the whole list: --set 'data.mixture=[...]')."""
    if isinstance(key, str) and not (key.isdecimal() and len(key) <= 9):
        raise SpecError([Issue(dotted(walked), f"is a list; {_clip(key, 40)!r} is not an index of it: write "
                                               f"{dotted(walked)}[0] ... [{max(len(items) - 1, 0)}]", origin)])
    index = int(key)
    if index >= len(items):
        valid = f"an index from 0 to {len(items) - 1}" if items else "none: the list is empty"
        raise SpecError([Issue(dotted(walked), f"has {len(items)} entr{'y' if len(items) == 1 else 'ies'}, so "
                                               f"[{index}] does not exist (valid: {valid}); to add entries, set the "
                                               f"whole list, e.g. --set '{dotted(walked)}=[...]'", origin)])
    return index


def resolve_mapping(source: str | Path | Mapping[str, Any] | Experiment, overrides: Iterable[str] = (),
                    profile: str | None = None) -> tuple[dict[str, Any], str]:
    """The raw mapping a spec stands for after its profile and overrides, and a name for its
    source (for error messages); not yet validated."""
    data, name, _ = _resolve(source, overrides, profile)
    return data, name


def _resolve(source: str | Path | Mapping[str, Any] | Experiment, overrides: Iterable[str],
             profile: str | None) -> tuple[dict[str, Any], str, list[Override]]:
    if isinstance(source, Experiment):
        data, name = source.model_dump(mode="json"), "<experiment>"
    elif isinstance(source, Mapping):
        name = "<mapping>"
        check_shape(source, name)  # before copying: a deep or cyclic mapping would overflow deepcopy
        data = copy.deepcopy(dict(source))
    else:
        data, name = read_mapping(source), str(source)
    if profile:
        data = deep_merge(data, _profile(data, profile, name))
    data, applied = _apply_overrides(data, overrides)
    return data, name, applied


def _profile(data: dict[str, Any], profile: str, source: str) -> Mapping[str, Any]:
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, Mapping):
        raise SpecError([Issue("profiles", f"must map profile names to partial specs, got a {_type_name(profiles)}; "
                                           f"write e.g. profiles: {{tiny: {{backbone: {{layers: 2}}}}}}")], source)
    if profile not in profiles:
        names = sorted(str(k) for k in profiles)
        raise SpecError([Issue("profiles", f"no profile {_clip(profile)!r}; this spec defines {names or 'none'}")], source)
    patch = profiles[profile]
    if not isinstance(patch, Mapping):
        raise SpecError([Issue(f"profiles.{profile}", f"must be a partial spec (a mapping such as "
                                                      f"{{backbone: {{layers: 2}}}}), got a {_type_name(patch)}")], source)
    return patch


def load(source: str | Path | Mapping[str, Any] | Experiment, overrides: Iterable[str] = (),
         profile: str | None = None) -> Experiment:
    """Load and validate an experiment. Raises SpecError listing every problem at once; an
    issue caused by a `--set` override names the override."""
    data, name, applied = _resolve(source, overrides, profile)
    if isinstance(source, (str, Path)):  # backbone.from_hf relative to the spec file, as data paths are
        data = anchor_encoder_paths(anchor_from_hf(data, Path(source).parent), Path(source).parent)
    try:
        return Experiment.model_validate(data)
    except ValidationError as e:
        err = from_validation_error(e, Experiment, data, name)
        raise SpecError([_attribute(i, applied) for i in err.issues], name) from None


def _attribute(issue: Issue, applied: list[Override]) -> Issue:
    for o in reversed(applied):  # the last override of a key is the one that counts
        if issue.path and not issue.origin and o.owns(issue.path):
            return Issue(issue.path, issue.message, f"--set {o.text}")
    return issue


def load_cluster(data: Any, source: str) -> Cluster:
    """Validate a cluster given on its own (`vlac compile --cluster FILE`) by the same rules as
    one inside a spec, including the bounds on its size and figures."""
    try:
        cluster = Cluster.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e, Cluster, data, source) from None
    problems = [line.split(": ", 1) for line in cluster_rules(cluster)]
    if problems:
        raise SpecError([Issue(f"cluster.{path}", message) for path, message in problems], source)
    return cluster


def dump(exp: Experiment) -> str:
    """YAML text of an experiment with every default filled in; load(dump(x)) == x."""
    return yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=100)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _value_problem(e: ValueError) -> str:
    text = _one_line(e)
    if "integer string conversion" in text:
        return "a number has more than 4,300 digits; no spec value needs that many"
    return text[:200]


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    return {"int": "number", "float": "number", "str": "string", "NoneType": "null"}.get(
        type(value).__name__, type(value).__name__)
