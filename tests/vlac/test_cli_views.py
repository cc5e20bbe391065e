"""What `vlac compile` shows: an infeasible plan exits 3 and says so in every view (table, --json,
--report), sizes are decimal units everywhere, small figures keep a unit that shows them, the
pipeline picture names no schedule without pipelining, and piped output is never wrapped."""

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from vlac.cli import EXIT_INFEASIBLE, app
from vlac.compiler.number_format import data_size, duration

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "examples" / "tiny_vla.yaml")
TOO_SMALL = ["--set", "cluster.gpu.memory=3.01GB"]  # 10 MB usable after the 3 GB headroom: nothing fits
runner = CliRunner()


def test_infeasible_plan_exits_3_and_says_so_in_every_view(tmp_path):
    table = runner.invoke(app, ["compile", TINY, *TOO_SMALL, "--report", str(tmp_path)])
    assert table.exit_code == EXIT_INFEASIBLE == 3, table.output
    assert "INFEASIBLE" in table.output and "runs as planned" not in table.output
    assert "INFEASIBLE" in (tmp_path / "plan.txt").read_text()
    assert "INFEASIBLE" in (tmp_path / "memory.svg").read_text()
    as_json = runner.invoke(app, ["compile", TINY, *TOO_SMALL, "--json"])
    assert as_json.exit_code == 3
    assert json.loads(as_json.stdout)["feasible"] is False


def test_feasible_compile_exits_0_with_units_for_small_figures_and_unwrapped_rows(tmp_path):
    res = runner.invoke(app, ["compile", TINY, "--report", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "runs as planned" in res.output
    # the tiny plan's step time is ~0.2 ms and its memory ~20 MB: shown with units, never as zeros
    assert " s " not in re.findall(r"step time\s+│([^│]*)│", res.output)[0] + " "
    assert "0.0000" not in res.output and "│ 0.00 │" not in res.output
    assert re.search(r"total\s+│\s+[\d.]+ MB", res.output), res.output
    # CliRunner's output is not a terminal: rows stay whole however long they are
    assert any("legal layouts" in line and "dominated" in line for line in res.output.splitlines())
    for name in ("graph.html", "graph-layers.svg", "memory.svg", "pipeline.svg", "plan.txt"):
        text = (tmp_path / name).read_text()
        assert not re.search(r"\d (KiB|MiB|GiB|TiB)", text), name  # one convention: decimal units
    assert "1f1b" not in (tmp_path / "pipeline.svg").read_text()  # the tiny plan does not pipeline
    assert "no pipelining" in (tmp_path / "pipeline.svg").read_text()


def test_number_formats_keep_a_unit_that_shows_the_value():
    assert data_size(12e6) == "12.00 MB" and data_size(3.2e9) == "3.20 GB" and data_size(512) == "512 B"
    assert duration(2.5) == "2.5 s" and duration(2.26e-4) == "226 us" and duration(0.0123) == "12.3 ms"
