"""`vlac search` with hostile space files (found by fuzzing): a value no results column can hold is
refused up front naming its place in the space, and markup in a candidate's values or reasons is
printed as text; exit 2 or 0, never an internal error."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlac.cli import app

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "examples" / "tiny_vla.yaml")


def _search(tmp_path, space_text):
    space = tmp_path / "space.yaml"
    space.write_text(space_text)
    return CliRunner().invoke(app, ["search", TINY, "--space", str(space), "-o", str(tmp_path / "out"),
                                    "--workers", "1", "--no-progress"])


@pytest.mark.parametrize("text,where", [
    ("space:\n  moe.experts: [9223372036854775808, 4]\nbudget: 2\n", "space.moe.experts[0]"),
    ("moe.experts: [4, " + "9" * 400 + "]\n", "space.moe.experts[1]"),
])
def test_an_integer_beyond_64_bits_is_refused_naming_its_place(tmp_path, text, where):
    r = _search(tmp_path, text)
    assert r.exit_code == 2, r.output
    assert "internal error" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit))
    assert where in r.stderr and "out of range" in r.stderr, r.stderr


def test_markup_in_candidate_values_is_printed_as_text(tmp_path):
    r = _search(tmp_path, 'space:\n  moe.experts: ["[/x]", 4]\n')
    assert r.exit_code == 0, r.output
    assert "internal error" not in r.output
    assert "[/x]" in r.stdout  # the invalid candidate's example and reason, as written


@pytest.mark.parametrize("setting,says", [('seed: "[/x]"', "seed = '[/x]' is not a whole number"),
                                          ("pareto: true", "pareto = True is not two metrics"),
                                          ("objective: 5", "objective = 5 is not min:NAME or max:NAME")])
def test_a_setting_of_the_wrong_type_is_refused_naming_it(tmp_path, setting, says):
    r = _search(tmp_path, f"space:\n  moe.experts: [2, 4]\nbudget: 2\n{setting}\n")
    assert r.exit_code == 2, r.output
    assert "internal error" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit))
    assert says in r.stderr, r.stderr


def test_null_settings_take_their_defaults(tmp_path):
    r = _search(tmp_path, "space:\n  moe.experts: [2, 4]\npareto_epsilon: null\nseed: null\n")
    assert r.exit_code == 0, r.output
