"""Loading specs: a file, mapping or Experiment with its profile and `--set` overrides applied,
validated into an Experiment (or a cluster file into a Cluster); and the YAML text of one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import ValidationError

from .errors import Issue, SpecError, from_validation_error
from .experiment import Experiment, cluster_rules
from .input_bounds import as_yaml_values
from .input_text import clip, type_name
from .modalities import anchor_encoder_paths
from .overrides import Override, apply_overrides_in_place, deep_merge
from .pretrained import anchor_from_hf
from .spec_files import read_mapping
from .system import Cluster
from .tokenizer_file import tokenizer_path_issues


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
        data = as_yaml_values(source, name)
    else:
        data, name = read_mapping(source), str(source)
    if profile is not None:  # --profile "" names no profile: refused below, not read as "none given"
        data = deep_merge(data, _profile(data, profile, name))
    data, applied = apply_overrides_in_place(data, overrides)
    return data, name, applied


def _profile(data: dict[str, Any], profile: str, source: str) -> Mapping[str, Any]:
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, Mapping):
        raise SpecError([Issue("profiles", f"must map profile names to partial specs, got a {type_name(profiles)}; "
                                           f"write e.g. profiles: {{tiny: {{backbone: {{layers: 2}}}}}}")], source)
    if profile not in profiles:
        names = sorted(str(k) for k in profiles)
        raise SpecError([Issue("profiles", f"no profile {clip(profile)!r}; this spec defines {names or 'none'}")], source)
    patch = profiles[profile]
    if not isinstance(patch, Mapping):
        raise SpecError([Issue(f"profiles.{profile}", f"must be a partial spec (a mapping such as "
                                                      f"{{backbone: {{layers: 2}}}}), got a {type_name(patch)}")], source)
    return patch


def load(source: str | Path | Mapping[str, Any] | Experiment, overrides: Iterable[str] = (),
         profile: str | None = None) -> Experiment:
    """Load and validate an experiment. Raises SpecError listing every problem at once; an
    issue caused by a `--set` override names the override."""
    data, name, applied = _resolve(source, overrides, profile)
    if isinstance(source, (str, Path)):  # backbone.from_hf relative to the spec file, as data paths are
        data = anchor_encoder_paths(anchor_from_hf(data, Path(source).parent), Path(source).parent)
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as e:
        err = from_validation_error(e, Experiment, data, name)
        raise SpecError([_attribute(i, applied) for i in err.issues], name) from None
    base = Path(source).parent if isinstance(source, (str, Path)) else None
    corrupt = tokenizer_path_issues(exp.modalities, base)
    if corrupt:
        raise SpecError([_attribute(Issue(path, message), applied) for path, message in corrupt], name)
    return exp


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
    except ValidationError as e:  # named as in a spec (cluster.gpu.memory), as the rules below are
        err = from_validation_error(e, Cluster, data, source)
        raise SpecError([Issue(f"cluster.{i.path}" if i.path else "cluster", i.message) for i in err.issues],
                        source) from None
    problems = [line.split(": ", 1) for line in cluster_rules(cluster)]
    if problems:
        raise SpecError([Issue(f"cluster.{path}", message) for path, message in problems], source)
    return cluster


def dump(exp: Experiment) -> str:
    """YAML text of an experiment with every default filled in; load(dump(x)) == x."""
    return yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=100)
