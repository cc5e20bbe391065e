"""The base of every spec model: frozen, strict about unknown keys, documented."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SpecModel(BaseModel):
    """A section of an experiment spec.

    Frozen so a validated experiment cannot drift after the compiler has looked at it;
    `extra="forbid"` so a misspelt key is an error (with a suggestion) instead of a silently
    ignored setting.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
