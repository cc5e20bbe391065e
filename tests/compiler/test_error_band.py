"""The expected error band printed with every plan comes from the leave-one-out table."""

from pathlib import Path

from vlac.compiler.error_band import BAND_FILE, error_band, load_bands

BANDS = {"stacks": ["A", "B"], "runs": ["r1", "r2", "r3", "r4", "r5", "r6"],
         "groups": {"all": {"runs": 6, "median": 0.05, "max": 0.2},
                    "precision: FP8": {"runs": 3, "median": 0.03, "max": 0.08},
                    "model: dense": {"runs": 4, "median": 0.04, "max": 0.12},
                    "model: MoE": {"runs": 2, "median": 0.01, "max": 0.01}}}


def test_the_wider_of_the_matching_regimes_is_stated():
    line = error_band(fp8=True, moe=False, bands=BANDS)
    assert line.startswith("±4 % median, ±12 % worst") and "model: dense" in line and "2 stacks" in line


def test_a_regime_with_too_few_runs_falls_back_to_all():
    line = error_band(fp8=False, moe=True, bands=BANDS)  # no BF16 runs, too few MoE runs
    assert line.startswith("±5 % median, ±20 % worst") and "fewer than 3 cited runs" in line


def test_no_table_says_how_to_make_one(tmp_path: Path):
    assert load_bands(tmp_path / "missing.json") is None
    assert "fidelity.py --loo" in error_band(True, True, bands={})


def test_the_shipped_table_is_consistent():
    bands = load_bands(BAND_FILE)
    assert bands is not None
    groups = bands["groups"]
    assert groups["all"]["runs"] == len(bands["runs"])
    for g in groups.values():
        assert 0 <= g["median"] <= g["max"] and 1 <= g["runs"] <= groups["all"]["runs"]


def test_the_plans_stack_is_a_regime_and_an_uncited_stack_is_said_so():
    bands = {**BANDS, "groups": {**BANDS["groups"], "stack: megatron-te": {"runs": 5, "median": 0.02, "max": 0.03}}}
    line = error_band(fp8=True, moe=False, bands=bands, stack="megatron-te")
    # the stack's own band, though its precision and model regimes are wider
    assert line.startswith("±2 % median, ±3 % worst") and "stack: megatron-te" in line and "may be larger" not in line
    line = error_band(fp8=True, moe=False, bands=bands, stack="vlac")
    assert line.startswith("±4 % median") and "fewer than 3 cited runs on the vlac stack" in line
