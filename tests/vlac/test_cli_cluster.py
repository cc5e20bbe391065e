"""`vlac compile --cluster` checks and reports a preset name against the spec's preset table
(vlac.spec.hardware_presets.PRESETS, which the spec's Cluster validates against), and its help
text lists every preset of that table."""

from pathlib import Path

from typer.testing import CliRunner

import vlac.spec.hardware_presets as presets
import vlac.spec.system as system
from vlac.cli import app

TINY = str(Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml")
runner = CliRunner()


def test_an_unknown_cluster_is_refused_listing_the_presets_of_the_table(monkeypatch):
    # a name added to the table shows in the error: the CLI reads the table, not a copy of it
    monkeypatch.setattr(presets, "PRESETS", presets.PRESETS + ("b200-test",))
    r = runner.invoke(app, ["compile", TINY, "--cluster", "h900"])
    assert r.exit_code == 2
    assert "--cluster 'h900'" in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert all(name in r.stderr for name in presets.PRESETS)


def test_compile_help_lists_every_cluster_preset():
    r = runner.invoke(app, ["compile", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    assert all(name in r.stdout for name in system.PRESETS)
