"""Where a mixture component's samples come from when they are the user's own data
(`data.mixture[i].source`): WebDataset tar shards, a LeRobot robot dataset, a Parquet/JSONL table,
or token shards already written by `vlac prepare`.

Every source maps the component's modalities (the keys) to where each sample keeps them (the
values): a WebDataset extension (`jpg`, `txt`, `json.caption` for a field of the json member), a
LeRobot feature (`observation.images.top`, `observation.state`, `action`, `task`) or a table column.
Paths may use brace (`{000..009}`) and glob (`*`) patterns. A relative path is relative to the
folder of the spec file that names it, not to where a command runs: the `vlac` commands anchor
sources, `data.prepared` and the modalities' tokenizer `path`s there (`anchor_paths`) before using
the spec, and `vlac emit` writes the anchored, absolute paths into the program it emits.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, field_validator

from .base import SpecModel

_FIELDS_HELP = "modality name -> where each sample keeps it"


def _nonempty_mapping(value: dict[str, str]) -> dict[str, str]:
    if not value:
        raise ValueError("maps no modality; map each of the component's modalities, e.g. {image: jpg, text: txt}")
    empty = [k for k, v in value.items() if not v.strip()]
    if empty:
        raise ValueError(f"modalities {empty} map to an empty key; name the sample key or column each comes from")
    return value


class WebDatasetSource(SpecModel):
    kind: Literal["webdataset"] = Field("webdataset", description="source kind (the tag that selects this reader)")
    pattern: str = Field(min_length=1, description='tar shards: a path with brace/glob patterns, e.g. "/data/cc/shard-{0000..0099}.tar"')
    fields: dict[str, str] = Field(description=f"{_FIELDS_HELP}: a member extension (jpg, png, txt, npy, json) or json.FIELD")

    _check = field_validator("fields")(_nonempty_mapping)


class LeRobotSource(SpecModel):
    kind: Literal["lerobot"] = Field("lerobot", description="source kind (the tag that selects this reader)")
    root: str = Field(min_length=1, description="LeRobot dataset folder (with meta/info.json, data/, videos/)")
    fields: dict[str, str] = Field(description=f"{_FIELDS_HELP}: a feature of meta/info.json (a camera, observation.state, action) or task")
    episodes: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(
        None, description="episode indices to read (default: every episode)")
    frame_stride: int = Field(1, ge=1, le=2**31 - 1, description="one sample every N frames of an episode")

    _check = field_validator("fields")(_nonempty_mapping)


class TableSource(SpecModel):
    kind: Literal["table"] = Field("table", description="source kind (the tag that selects this reader)")
    pattern: str = Field(min_length=1, description="Parquet (.parquet) or JSON-lines (.jsonl) files: a path with brace/glob patterns")
    fields: dict[str, str] = Field(description=f"{_FIELDS_HELP}: a column; image columns hold bytes or file paths (relative to the table)")

    _check = field_validator("fields")(_nonempty_mapping)


class TokenShardsSource(SpecModel):
    kind: Literal["tokens"] = Field("tokens", description="source kind (the tag that selects this reader)")
    path: str = Field(min_length=1, description="folder of indexed token shards written by `vlac prepare` (one component's folder)")


DataSourceSpec = Annotated[WebDatasetSource | LeRobotSource | TableSource | TokenShardsSource, Field(discriminator="kind")]
SOURCE_KINDS = ("webdataset", "lerobot", "table", "tokens")


def check_source_fields(source, modalities: list[str]) -> None:
    """Every modality of the component comes from somewhere, and nothing else is mapped."""
    if source is None or source.kind == "tokens":
        return
    missing = [m for m in modalities if m not in source.fields]
    extra = [m for m in source.fields if m not in modalities]
    if missing:
        raise ValueError(f"source.fields: modalities {missing} of this component are not mapped; "
                         f"add e.g. {missing[0]}: <key or column>")
    if extra:
        raise ValueError(f"source.fields: {extra} are not modalities of this component ({modalities}); "
                         f"remove them or add them to modalities")


_SOURCE_PATH_FIELDS = {"webdataset": "pattern", "table": "pattern", "lerobot": "root", "tokens": "path"}


def _anchor(path: str, base: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))


def anchor_paths(exp, base):
    """`exp` with every relative data path (sources, data.prepared, modality tokenizer paths) made
    absolute against `base` (the spec file's folder). Absolute paths are kept, so anchoring twice
    changes nothing; a spec without sources or tokenizer paths comes back as it is (its emitted
    program does not depend on where the spec lives)."""
    base = os.path.abspath(str(base))
    mixture = []
    for comp in exp.data.mixture:
        if comp.source is not None:
            key = _SOURCE_PATH_FIELDS[comp.source.kind]
            comp = comp.model_copy(update={"source": comp.source.model_copy(
                update={key: _anchor(getattr(comp.source, key), base)})})
        mixture.append(comp)
    sourced = any(c.source is not None for c in mixture)
    data = exp.data.model_copy(update={"mixture": mixture, "prepared": _anchor(exp.data.prepared, base)}) if sourced else exp.data
    modalities = {n: m.model_copy(update={"path": _anchor(m.path, base)}) if getattr(m, "path", None) else m
                  for n, m in exp.modalities.items()}
    return exp.model_copy(update={"data": data, "modalities": modalities})
