"""`vlac search`: writes the results, the picture and a best spec that `vlac compile` accepts."""

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from vlac.cli import app

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "examples" / "tiny_vla.yaml")
runner = CliRunner()


def _space_file(tmp_path: Path, content: dict) -> str:
    path = tmp_path / f"space{len(list(tmp_path.glob('space*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(content))
    return str(path)


def test_search_writes_results_and_a_compilable_winner(tmp_path):
    space = _space_file(tmp_path, {"space": {"moe.experts": [2, 4, 8], "moe.top_k": [1, 2]},
                                   "objective": "max:tokens_per_s", "constraints": ["params_active <= 130k"]})
    out = tmp_path / "out"
    r = runner.invoke(app, ["search", TINY, "--space", space, "-o", str(out), "--workers", "1",
                            "--constraint", "gpus <= 2", "--no-progress"])
    assert r.exit_code == 0, r.stderr
    assert "winner #" in r.stdout and "Plan" in r.stdout
    for name in ("results.csv", "results.json", "pareto.svg", "best.yaml", "best_plan.json"):
        assert (out / name).is_file(), name
    data = json.loads((out / "results.json").read_text())
    assert data["search"]["constraints"] == ["params_active <= 130k", "gpus <= 2"]
    assert len(data["results"]) == 6 and data["best"]["index"] in data["pareto"] + [r["index"] for r in data["results"]]
    compiled = runner.invoke(app, ["compile", str(out / "best.yaml"), "--json"])
    assert compiled.exit_code == 0, compiled.stderr
    assert json.loads(compiled.stdout) == json.loads((out / "best_plan.json").read_text())


def test_random_search_from_the_command_line(tmp_path):
    space = _space_file(tmp_path, {"moe.experts": [2, 4, 8], "backbone.layers": {"range": [1, 4]}})
    outs = []
    for name in ("a", "b"):
        r = runner.invoke(app, ["search", TINY, "--space", space, "-o", str(tmp_path / name), "--strategy", "random",
                                "--budget", "3", "--seed", "7", "--workers", "1", "--no-progress"])
        assert r.exit_code == 0, r.stderr
        outs.append((tmp_path / name / "results.csv").read_bytes())
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 4


def test_bad_search_definitions_exit_2_without_traceback(tmp_path):
    out = str(tmp_path / "out")
    cases = [
        (_space_file(tmp_path, {"space": {"moe.expert": [2]}}), [], "did you mean 'experts'"),
        (_space_file(tmp_path, {"space": {"moe.experts": [2]}, "objectives": "max:mfu"}), [], "unknown key"),
        (_space_file(tmp_path, {"moe.experts": [2]}), ["--constraint", "mfu >> 3"], "not a number"),
        (_space_file(tmp_path, {"moe.experts": [2]}), ["--strategy", "random"], "needs a budget"),
    ]
    for space, extra, message in cases:
        r = runner.invoke(app, ["search", TINY, "--space", space, "-o", out, "--workers", "1", *extra])
        assert r.exit_code == 2, (message, r.stdout)
        assert message in " ".join(r.stderr.split()) and "Traceback" not in r.stderr + r.stdout
