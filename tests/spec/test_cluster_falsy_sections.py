"""cluster.gpu and cluster.network written as a falsy non-mapping ("", 0, false, []) are refused
naming the field; the preset filled them in silently before (`given or {}`: found by fuzzing
--set). Absent, null or {} still take the preset's figures."""

from pathlib import Path

import pytest

from vlac.spec import SpecError, load

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"


@pytest.mark.parametrize("override", ["cluster.gpu=", "cluster.gpu=0", "cluster.network=false", "cluster.network=[]"])
def test_a_falsy_non_mapping_section_is_refused(override):
    with pytest.raises(SpecError) as e:
        load(TINY, [override])
    field = override.split("=")[0]
    assert f"({field}): expected a section" in str(e.value)


@pytest.mark.parametrize("override", ["cluster.gpu=null", "cluster.gpu={}", "cluster.network=null"])
def test_null_or_empty_takes_the_presets_figures(override):
    assert load(TINY, [override]).cluster.gpu.memory == load(TINY).cluster.gpu.memory
