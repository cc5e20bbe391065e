"""The base of every spec model (frozen, strict about unknown keys, finite numbers) and the
string types whose values reach generated files, paths and batch scripts."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class SpecModel(BaseModel):
    """A section of an experiment spec.

    Frozen so a validated experiment cannot drift after the compiler has looked at it;
    `extra="forbid"` so a misspelt key is an error (with a suggestion) instead of a silently
    ignored setting; `allow_inf_nan=False` so no NaN or infinity (in a field, a tuple or a
    mapping of floats) reaches the planner's arithmetic or the training loop. `strict` so a value
    of the wrong type is an error (spec/type_errors.py words it) instead of a silent conversion:
    pydantic's lax mode reads `layers: true` as 1 layer, `attention_sinks: "yes"` as true,
    `depth: 1.0` as 1 and `"4"` as 4. Strict still takes what YAML writes for each type: an int
    for a float (`lr: 1`), strings for Literals, and dicts for sections; tuple fields say
    `strict=False` (YAML has lists, not tuples), which keeps their items strict, and the unit
    types (units.py) parse their strings before the check. `defer_build` so
    importing the spec does not build a validator per section: validating an Experiment builds
    the one it needs (`vlac validate` starts faster).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False,
                              defer_build=True, strict=True)


MAX_NAME = 100  # characters: a run folder, a Slurm job name and a file-name component
MAX_TEXT = 4000

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SLURM_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _clip(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def check_name(value: str) -> str:
    """A name that becomes a folder (`runs/NAME`), a job name and part of file names: letters,
    digits, `.`, `_`, `-`; starts with a letter or digit; no `..` (so it cannot leave a folder)."""
    if not value:
        raise ValueError("is empty; use letters, digits, '.', '_' and '-', e.g. my-run")
    if len(value) > MAX_NAME or not _NAME.fullmatch(value) or ".." in value:
        safe = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", value[:MAX_NAME])).strip(".-_") or "my-run"
        raise ValueError(f"{_clip(value)} is not a valid name: use at most {MAX_NAME} letters, digits, '.', '_' and "
                         f"'-', starting with a letter or digit, without '..' (it names a folder and a job); "
                         f"e.g. {safe}")
    return value


def check_identifier(value: str) -> str:
    """A name used inside the model (a module name, a metric label): a Python identifier."""
    if len(value) > MAX_NAME or not _IDENTIFIER.fullmatch(value):
        # ASCII only (\W would keep an "é", which the pattern refuses): the example must pass this check
        safe = re.sub(r"[^A-Za-z0-9_]+", "_", value[:MAX_NAME - 2]).strip("_") or "signal"
        safe = safe if _IDENTIFIER.fullmatch(safe) else f"m_{safe}"
        raise ValueError(f"{_clip(value)} is not a valid modality name: use letters, digits and '_', starting with "
                         f"a letter (it names model modules); e.g. {safe}")
    return value


def check_slurm_word(value: str) -> str:
    """A Slurm partition, account or QOS: written into `#SBATCH` directives, which are not
    shell-parsed, so only characters that need no quoting are allowed."""
    if not value or len(value) > MAX_NAME or not all(_SLURM_WORD.fullmatch(w) for w in value.split(",")):
        raise ValueError(f"{_clip(value)} is not a Slurm name: use letters, digits, '_', '.' and '-' (a "
                         f"comma-separated list for several partitions), no spaces, quotes or newlines; "
                         f"ask `sinfo` / `sacctmgr show assoc` for the names on your cluster")
    return value


def check_text(value: str) -> str:
    """Free text (descriptions): any printable characters, newlines and tabs; no other control
    or format characters (they hide text in terminals and break the files it is written to)."""
    if len(value) > MAX_TEXT:
        raise ValueError(f"is {len(value):,} characters long; keep it under {MAX_TEXT:,}")
    bad = next((c for c in value if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co")), None)
    if bad is not None:
        raise ValueError(f"contains the control character U+{ord(bad):04X} at position {value.index(bad)}; "
                         f"remove it")
    return value


Name = Annotated[str, AfterValidator(check_name)]
Identifier = Annotated[str, AfterValidator(check_identifier)]
SlurmWord = Annotated[str, AfterValidator(check_slurm_word)]
Text = Annotated[str, AfterValidator(check_text)]
