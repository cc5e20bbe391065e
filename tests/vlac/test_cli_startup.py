"""`vlac --help` and `vlac validate` start without importing torch (the start-up time goal is in
benchmarks/cli_startup.py); the commands registered lazily are listed and still run."""

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from vlac.cli import PIN_KEYS, app
from vlac.cli_lazy import LAZY_COMMANDS, load_command

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_importing_the_cli_and_vlac_does_not_import_torch():
    code = "import sys, vlac, vlac.cli; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_pin_keys_written_in_the_cli_match_the_planner():
    from vlac.compiler.planner import PIN_KEYS as planner_keys

    assert PIN_KEYS == planner_keys


def test_lazy_commands_are_listed_by_their_docstring_and_run():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "3 no layout fits in memory" in " ".join(res.output.split())  # the exit codes are documented
    for name, (_, _, short) in LAZY_COMMANDS.items():
        assert name in res.output
        command = load_command(name)
        assert " ".join(command.help.split()).startswith(short), name
    sub = runner.invoke(app, ["search", "--help"])
    assert sub.exit_code == 0 and "--space" in sub.output


def test_vlac_search_stays_callable_without_an_eager_import():
    code = ("import vlac, vlac.search as s, sys; "
            "sys.exit(0 if callable(vlac.search) and hasattr(vlac, 'Search') else 1)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_help_and_validate_leave_the_heavy_modules_unimported():
    """`vlac --help` loads neither pydantic, the spec's models nor the reports; `vlac validate`
    loads the spec but not torch, numpy or the compiler (their import time is the start-up goal)."""
    code = ("import sys; from vlac.cli import main; sys.argv = ['vlac'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "heavy = ('torch', 'numpy', 'pydantic', 'yaml', 'vlac.spec', 'vlac.report', 'vlac.compiler')\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy))))")
    def loaded(*args: str) -> set[str]:
        res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return set(res.stdout.split("\n")[-2].split())
    # the spec package itself and its plain preset tables only (the --cluster help lists the presets)
    assert loaded("--help") == {"vlac.spec", "vlac.spec.hardware_presets"}
    after_validate = loaded("validate", str(EXAMPLES / "tiny_vla.yaml"))
    assert "vlac.spec" in after_validate  # the check below can fail: it sees what was imported
    assert not {m for m in after_validate if m.split(".")[0] in ("torch", "numpy") or m.startswith("vlac.compiler")}

