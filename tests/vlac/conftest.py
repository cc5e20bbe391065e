"""The localhost Slurm cluster (.ci/slurm.sh) shared by every Slurm test of the session.

Skipped (with the reason) when Slurm is not installed or the cluster does not start, unless
VLAC_REQUIRE_SLURM=1 (CI), which turns every reason not to run into a failure. One cluster per
session: its ports are fixed, so two at once would collide.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parents[1])  # tests/, for slurm_cluster
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
from slurm_cluster import LocalSlurm, LocalSlurmError, slurm_unavailable_reason  # noqa: E402


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    required = os.environ.get("VLAC_REQUIRE_SLURM") == "1"
    reason = slurm_unavailable_reason()
    if reason is not None:
        if required:
            pytest.fail(f"VLAC_REQUIRE_SLURM=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm-state"))
    try:
        cluster.start()
    except LocalSlurmError as exc:
        cluster.stop()
        if required:
            pytest.fail(f"the local Slurm cluster did not start:\n{exc}", pytrace=False)
        pytest.skip(f"the local Slurm cluster did not start (set VLAC_REQUIRE_SLURM=1 to fail): {exc}")
    try:
        with pytest.MonkeyPatch.context() as mp:
            # submitit runs sbatch/sacct/scontrol with our environment, and sbatch exports it to
            # the job (srun, and submitit's `scontrol requeue` inside the job, need SLURM_CONF).
            # Drop what an enclosing Slurm allocation may have set.
            for key in list(os.environ):
                if key.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")):
                    mp.delenv(key)
            for key, value in cluster.env.items():
                mp.setenv(key, value)
            mp.setenv("OMP_NUM_THREADS", "1")  # the jobs are multi-process CPU runs
            yield cluster
    finally:
        cluster.stop()
