"""vlac.spec: the typed experiment spec, its loader and its errors."""

from .errors import Issue, SpecError
from .experiment import Experiment, VocabLayout
from .loader import apply_overrides, deep_merge, dump, load, read_mapping, resolve_mapping

__all__ = ["Experiment", "Issue", "SpecError", "VocabLayout", "apply_overrides", "deep_merge", "dump", "load", "read_mapping", "resolve_mapping"]
