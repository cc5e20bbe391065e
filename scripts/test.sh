#!/usr/bin/env bash
# The whole test suite (fast tests, multi-process tests, and the Slurm tests when a local Slurm
# can be started; `.ci/run` installs one and requires it). Extra arguments go to pytest, e.g.
# `bash scripts/test.sh -m "not slow"` for the fast tests only. --durations=30: every log (CI's too)
# ends with the 30 slowest tests, where the suite's time goes.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
.venv/bin/python -m pytest -q --durations=30 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$rc"
