"""Test-wide settings.

TRITON_INTERPRET must be set before anything imports triton (torchao does), so that the kernel
tests run Triton's CPU interpreter rather than looking for a GPU.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest

SLOW_TIMEOUT_S = 900  # multi-process tests: the default `timeout` (pyproject.toml) is for the rest


def pytest_collection_modifyitems(config, items):
    """Slow-marked tests get a longer timeout unless they set their own @pytest.mark.timeout."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
