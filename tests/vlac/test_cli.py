import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from vlac.cli import app

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "examples" / "tiny_vla.yaml")
FLAGSHIP = str(ROOT / "examples" / "vla_10b_moe_h100.yaml")
runner = CliRunner()


def test_validate_ok():
    r = runner.invoke(app, ["validate", TINY])
    assert r.exit_code == 0 and "ok" in r.stdout


def test_bad_spec_exits_2_with_every_problem_and_no_traceback():
    r = runner.invoke(app, ["validate", TINY, "--set", "backbone.kv_head=2", "--set", "moe.top_k=9"])
    assert r.exit_code == 2
    text = r.stderr
    assert "backbone.kv_head" in text and "did you mean 'kv_heads'" in text and "moe.top_k" in text
    assert "Traceback" not in text + r.stdout


def test_bad_arguments_exit_2():
    assert runner.invoke(app, ["compile", TINY, "--pin", "tensor=2"]).exit_code == 2
    assert runner.invoke(app, ["compile", TINY, "--cluster", "h900"]).exit_code == 2
    assert runner.invoke(app, ["submit", TINY, "--executor", "cloud"]).exit_code == 2
    assert runner.invoke(app, ["nope"]).exit_code == 2


def test_compile_json_contract():
    r = runner.invoke(app, ["compile", FLAGSHIP, "--json"])
    assert r.exit_code == 0, r.stderr
    j = json.loads(r.stdout)  # exactly one JSON object on stdout
    for key in ("params_total", "params_active", "flops_per_token"):
        assert j["model"][key] > 0
    assert j["model"]["params_total"] > j["model"]["params_active"]
    for key in ("dp", "tp", "pp", "ep", "cp", "microbatch_size", "num_microbatches", "schedule", "recompute",
                "sequence_parallel"):
        assert key in j["plan"]
    for key in ("step_time_s", "tokens_per_s", "mfu", "tflops_per_gpu", "peak_memory_gb"):
        assert key in j["predicted"]
    assert isinstance(j["fp8"]["gemms"], list) and all("fp8" in d and "reason" in d for d in j["fp8"]["gemms"])
    assert isinstance(j["alternatives"], list)
    # tokens/s and MFU follow from the step time and the graph's FLOPs, not typed in
    pred = j["predicted"]
    assert abs(pred["tokens_per_s"] * pred["step_time_s"] - 4 * 2**20) < 1
    flops = j["model"]["flops_per_token"] * 4 * 2**20
    assert abs(pred["mfu"] - flops / (256 * 989e12 * pred["step_time_s"])) < 1e-9


def test_compile_tables_and_graph():
    r = runner.invoke(app, ["compile", TINY, "--graph", "--pin", "zero=0", "--cluster", "h200"])
    assert r.exit_code == 0, r.stderr
    for needle in ("Per-layer costs", "Memory per GPU", "Step time", "MFU"):
        assert needle in r.stdout


def test_schema_is_json_with_descriptions():
    r = runner.invoke(app, ["schema"])
    schema = json.loads(r.stdout)
    assert schema["properties"]["backbone"] and "Backbone" in schema["$defs"]
    assert schema["$defs"]["Backbone"]["properties"]["kv_heads"]["description"]


def test_console_script_installed():
    r = subprocess.run([sys.executable, "-m", "vlac.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "compile" in r.stdout
