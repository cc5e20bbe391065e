"""benchmarks/kernels.py in its --interpret smoke mode (the GPU timing itself runs on a CUDA
machine), so the script and the results file it writes cannot rot between GPU sessions."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import vlac
from vlac.compiler.kernel_costs import kernel_costs_for, load_results
from vlac.runtime.kernels import KERNELS, triton_available

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks" / "kernels.py")
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up while the class is built
spec.loader.exec_module(bench)


@pytest.mark.triton
@pytest.mark.skipif(not triton_available(torch.empty(0)),
                    reason="needs Triton in interpreter mode: TRITON_INTERPRET=1 before triton is imported")
def test_the_interpreter_smoke_pass_checks_every_kernel_and_writes_a_valid_untimed_file(tmp_path, capsys):
    out = tmp_path / "kernels-smoke.json"
    assert bench.main(["--interpret", "--out", str(out)]) == 0
    assert "10/10 cases match their reference" in capsys.readouterr().out
    results = load_results(out)  # the planner's reader accepts what the benchmark writes
    assert {k for r in results.results for k in r.kernels} == set(KERNELS)
    assert all(r.match and r.bytes > 0 for r in results.results)
    assert all(r.seconds.triton is r.seconds.torch is r.seconds.compiled is None for r in results.results)
    # no timing claims: such a file never re-costs a plan, whatever GPU the cluster has
    costs = kernel_costs_for(vlac.load(ROOT / "examples" / "tiny_vla.yaml").cluster, out)
    assert costs.measured == {} and not costs.file["applied"]


def test_bytes_count_each_distinct_tensor_once():
    x, w = torch.zeros(6, 8, dtype=torch.bfloat16), torch.zeros(8)
    y = torch.zeros_like(x)
    assert bench.bytes_moved((x, w, x), (y, y.view(-1))) == 2 * 6 * 8 * 2 + 8 * 4


def test_the_table_compares_triton_with_the_assumed_bandwidth():
    row = {"case": "rms_norm_fwd_bwd", "match": True, "bytes": 2e9,
           "seconds": {"triton": 1e-3, "torch": 3e-3, "compiled": None}}
    cells = bench.table_row(row, assumed=2.5e12)
    assert cells["gb_s"] == pytest.approx(2000.0) and cells["vs_assumed"] == pytest.approx(0.8)
    assert cells["x_torch"] == pytest.approx(3.0) and cells["x_compiled"] is None
    h100 = bench.assumed_bandwidth("NVIDIA H100 80GB HBM3")
    assert h100 == pytest.approx(0.85 * 3.35e12) and bench.assumed_bandwidth("NVIDIA L4") is None
    json.dumps(cells)
