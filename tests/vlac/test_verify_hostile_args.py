"""`vlac verify` under hostile arguments: every bad --layouts / --profile is exit 2 with one line
naming it (never Python's int-conversion message, never a 10,000-character echo), and an error
verify's own checks do not expect is the CLI's one-line internal error, not a traceback. Nothing
here starts a process: each input fails before the first layout runs."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

import vlac.verify
from vlac.cli import app
from vlac.verify import LayoutSyntaxError, parse_layout

TINY = str(Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml")


@pytest.mark.parametrize("text, says", [
    ("dp" + "9" * 5000, "is not a degree"),
    ("tp2+v" + "3" * 5000, "unknown option"),
    ("x" * 10_000, "10,000 characters"),
    ("dp2+" + "q" * 10_000, "10,004 characters"),
])
def test_huge_layouts_are_refused_briefly(text, says):
    with pytest.raises(LayoutSyntaxError) as err:
        parse_layout(text)
    message = str(err.value)
    assert says in message and len(message) < 400 and message.startswith("layout ")


def test_short_layout_errors_keep_the_whole_layout_and_token():
    with pytest.raises(LayoutSyntaxError, match=r"layout 'dp2xqq3': 'qq3' is not a degree"):
        parse_layout("dp2xqq3")
    with pytest.raises(LayoutSyntaxError, match=r"layout 'tp1\+etp': \+etp splits"):
        parse_layout("tp1+etp")


def run(*args):
    return CliRunner().invoke(app, ["verify", TINY, *args])


def test_cli_refuses_huge_degrees_and_an_empty_profile_with_exit_2():
    for args in (["--layouts", "dp" + "9" * 5000], ["--profile", ""]):
        res = run(*args)
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output and "digits" not in res.output
    assert "no profile ''" in run("--profile", "").output


def test_an_unexpected_error_is_one_line_not_a_traceback(monkeypatch):
    def broken(*a, **k):
        raise KeyError("boom")

    monkeypatch.setattr(vlac.verify, "verification_spec", broken)
    res = run("--layouts", "dp2")
    assert res.exit_code == 1 and "internal error KeyError" in res.output
    assert "Traceback" not in res.output
