"""The one check of a refused command line, shared by the CLI tests: exit 2, no traceback or
internal error, and each expected text on stderr."""

from typer.testing import CliRunner, Result

from vlac.cli import app

runner = CliRunner()


def refused_cleanly(args: list[str], *expected: str) -> Result:
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output and "internal error" not in r.output
    for text in expected:
        assert text in r.stderr, r.stderr
    return r
