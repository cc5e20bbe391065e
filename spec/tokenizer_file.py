"""A cheap validate-time look at a text modality's trained tokenizer (`modalities.NAME.path`):
the JSON is parsed and the keys vlac's loader reads are checked, without importing the tokenizers
library. A corrupt file is then a spec issue naming the field, not a TokenizerLoadError when the
emitted program starts (vlac/data/tokenizers/saved.py:load_text reads the same file). A path
that does not exist here is left to run time: the program may run on a machine that has it."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

HF_FILE = "tokenizer.json"  # as vlac.data.tokenizers.saved.HF_FILE (spec does not import data)
MAX_BYTES = 1 << 30  # a tokenizer.json is megabytes; a larger file is not read at validate time


def tokenizer_file_problem(path: Path) -> str | None:
    """What is wrong with the Hugging Face tokenizer.json at `path` (a file, or a folder holding
    one), or None when it looks loadable or is not there."""
    file = path / HF_FILE if os.path.isdir(path) else path  # never raises: Path.is_dir() does on a too-long name
    try:
        st = file.stat()
    except OSError:
        return None
    if not file.is_file() or st.st_size > MAX_BYTES:
        return None
    # a search validates thousands of candidates of one spec: read each version of a file once
    return _file_problem(str(file), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _file_problem(name: str, mtime_ns: int, size: int) -> str | None:
    file = Path(name)
    try:
        data: Any = json.loads(file.read_bytes())
    except OSError as e:
        return f"cannot read {file}: {e.strerror or e}"
    except ValueError as e:  # JSON syntax or encoding
        return (f"{file} is not a Hugging Face tokenizer.json (not JSON: {str(e)[:120]}); point path at one, "
                f"or train one with `vlac tokenizer train`")
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), (dict, list)):
        return (f"{file} is not a Hugging Face tokenizer.json (it needs a `model` object with a `vocab`); "
                f"point path at one, or train one with `vlac tokenizer train`")
    if not isinstance(data.get("added_tokens", []), list):
        return f"{file}: `added_tokens` must be a list; point path at a Hugging Face tokenizer.json"
    return None


def tokenizer_path_issues(modalities: dict[str, Any], base: Path | None) -> list[tuple[str, str]]:
    """(field, message) for every text modality whose `path` holds a corrupt tokenizer.json; a
    relative path is read from `base` (the spec file's folder), as the program will."""
    issues = []
    for name, m in modalities.items():
        path = getattr(m, "path", None)
        if getattr(m, "kind", None) != "text" or not path:
            continue
        p = Path(path).expanduser()
        problem = tokenizer_file_problem(p if p.is_absolute() or base is None else base / p)
        if problem:
            issues.append((f"modalities.{name}.path", problem))
    return issues
