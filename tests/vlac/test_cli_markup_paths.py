"""Paths the user chose are printed as written: a folder named like rich markup ("[/x]") must not
crash `vlac emit` (rich's MarkupError) nor be swallowed as a style."""

from pathlib import Path

from typer.testing import CliRunner

from vlac.cli import app

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"


def test_emit_prints_a_markup_like_output_path_verbatim(tmp_path):
    out = tmp_path / "[/x][bold]prog"
    result = CliRunner().invoke(app, ["emit", str(TINY), "-o", str(out), "--pin", "dp=2,tp=1,pp=1,cp=1,ep=1"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output.replace("\n", "")
    assert (out / "train.py").is_file()


def test_verify_prints_an_error_that_looks_like_markup_verbatim(tmp_path):
    spec = tmp_path / "[/x]missing.yaml"  # the error names this path
    result = CliRunner().invoke(app, ["verify", str(spec), "--layouts", "dp2"])
    assert result.exit_code == 2, result.output
    assert "[/x]missing.yaml" in result.output.replace("\n", "")
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
