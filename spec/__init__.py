"""vlac.spec: the typed experiment spec, its loader and its errors."""

from .errors import Issue, SpecError
from .experiment import Experiment, VocabLayout
from .loader import dump, load, resolve_mapping
from .overrides import apply_overrides, deep_merge
from .spec_files import read_mapping

__all__ = ["Experiment", "Issue", "SpecError", "VocabLayout", "apply_overrides", "deep_merge", "dump", "load", "read_mapping", "resolve_mapping"]
