"""Where a mixture component's samples come from when they are the user's own data
(`data.mixture[i].source`): WebDataset tar shards, a LeRobot robot dataset, a Parquet/JSONL table,
or token shards already written by `vlac prepare`.

Every source maps the component's modalities (the keys) to where each sample keeps them (the
values): a WebDataset extension (`jpg`, `txt`, `json.caption` for a field of the json member), a
LeRobot feature (`observation.images.top`, `observation.state`, `action`, `task`) or a table column.
Paths may use brace (`{000..009}`) and glob (`*`) patterns; relative ones are read from the
folder the command runs in.
"""

from __future__ import annotations

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
    episodes: list[int] | None = Field(None, description="episode indices to read (default: every episode)")
    frame_stride: int = Field(1, ge=1, description="one sample every N frames of an episode")

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
