"""Test-wide settings.

TRITON_INTERPRET must be set before anything imports triton (torchao does), so that the kernel
tests run Triton's CPU interpreter rather than looking for a GPU.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest
import torch

SLOW_TIMEOUT_S = 900  # multi-process tests: the default `timeout` (pyproject.toml) is for the rest


def pytest_collection_modifyitems(config, items):
    """Slow-marked tests get a longer timeout unless they set their own @pytest.mark.timeout."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


@pytest.fixture(autouse=True)
def _process_state_is_restored():
    """A test that sets MASTER_ADDR, RANK, ... or torch's thread count in the pytest process itself
    would leak it into every later test (submitit's TorchDistributedEnvironment refuses to run when
    MASTER_ADDR is already set; one thread would slow the rest of the suite): put both back."""
    env, threads = dict(os.environ), torch.get_num_threads()
    yield
    if dict(os.environ) != env:
        os.environ.clear()
        os.environ.update(env)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def example_plan():
    """example_plan(path) -> (vlac.load(path), vlac.plan(of it)): each example spec loaded and
    planned with the defaults once per session. Several files check the default plan of every
    example (tests/spec/test_examples.py, tests/compiler/test_planner_runtime_limits.py), and
    planning the full-size DeepSeek-V3 alone takes seconds; the tests only read the plan."""
    import vlac

    plans = {}

    def load_and_plan(path):
        if path not in plans:
            exp = vlac.load(path)
            plans[path] = (exp, vlac.plan(exp))
        return plans[path]

    return load_and_plan
