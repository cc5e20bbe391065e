"""A search whose every candidate is rejected still writes its results: the Pareto front of no
results is empty (numpy refused to shape the empty array, so `vlac search` ended with "cannot
reshape array of size 0" after the whole search ran; found by fuzzing space files)."""

from pathlib import Path

from typer.testing import CliRunner

from vlac.cli import app
from vlac.search import pareto_front

ROOT = Path(__file__).resolve().parents[2]


def test_the_front_of_no_results_is_empty():
    assert pareto_front([], lambda r: (r, r)) == []


def test_a_search_rejecting_every_candidate_writes_its_results(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  moe.experts: [1]\n")  # tiny_vla routes top_k 2: one expert is invalid
    r = CliRunner().invoke(app, ["search", str(ROOT / "examples" / "tiny_vla.yaml"), "--space", str(space),
                                 "-o", str(tmp_path / "out"), "--workers", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "no candidate is ok" in r.output
    assert (tmp_path / "out" / "results.json").is_file()
