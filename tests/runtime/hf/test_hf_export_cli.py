"""`vlac export`'s errors name the fix. (The whole path, spec with `backbone: {from_hf}` -> vlac
submit -> vlac export -> transformers, is the guide's worked example: test_hf_docs.py.)"""

from typer.testing import CliRunner

from vlac.cli import app


def test_export_command_errors_name_the_fix(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(tmp_path / "nowhere"), "--hf", str(tmp_path / "out")])
    assert result.exit_code == 2 and "is not a folder" in result.output
    (tmp_path / "run").mkdir()
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--hf", str(tmp_path / "out")])
    assert result.exit_code == 2 and "has the run saved a checkpoint?" in result.output
