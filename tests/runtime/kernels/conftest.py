"""What every kernel test shares.

- TRITON_INTERPRET=1 is set by tests/conftest.py, before anything imports triton, so the Triton
  kernels run in the CPU interpreter here.
- A test marked `triton` is skipped, with the reason, where Triton cannot run (not installed,
  or neither CUDA nor the interpreter).
- Every property test (`@given`) runs 25 examples without a deadline: the interpreter executes
  each kernel program element by element, slowly and unevenly, so the default 100 examples and
  200 ms deadline would make the suite slow and flaky without finding more.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import settings

from vlac.runtime.kernels import triton_available

TRITON_RUNS = triton_available(torch.empty(0))
NO_TRITON_REASON = "needs Triton in interpreter mode: TRITON_INTERPRET=1 before triton is imported"
PROPERTY_BUDGET = settings(max_examples=25, deadline=None)


def pytest_pycollect_makeitem(collector, name, obj):
    """Give each property test of this directory the budget above (collection hooks of a
    conftest see only its own directory's modules)."""
    if inspect.isfunction(obj) and collector.funcnamefilter(name) and hasattr(obj, "hypothesis"):
        PROPERTY_BUDGET(obj)  # public API: @settings applied over @given; a test with its own @settings fails loudly
    return None  # collect as usual


def pytest_runtest_setup(item):
    if item.get_closest_marker("triton") is not None and not TRITON_RUNS:
        pytest.skip(NO_TRITON_REASON)
