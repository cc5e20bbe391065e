"""Spec strings that reach generated files, folders and batch scripts are validated as what
they are (a name, a Slurm word, free text): anything that could leave its line in a script or
its folder on disk is refused at validation with the field named."""

from pathlib import Path

import pytest
import yaml

from vlac.spec import SpecError, load

ROOT = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((ROOT / "examples" / "tiny_vla.yaml").read_text())

HOSTILE = ["a\nb", "x\r#SBATCH --wrap=id", "$(id)", "`id`", "a;id", "a b", "'q'", '"q"', "../up", "/abs",
           "a/b", "..", "", "a\x00b", "\u202eevil", "x" * 200, "[/x]", "-o", ".hidden"]


def _issues(data, *overrides):
    with pytest.raises(SpecError) as info:
        load(data, overrides)
    return info.value.issues


def _with(path: str, value):
    data = yaml.safe_load(yaml.safe_dump(TINY))
    node = data
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return data


@pytest.mark.parametrize("value", HOSTILE)
def test_names_that_could_leave_the_output_folder_or_a_script_line_are_refused(value):
    issues = _issues(_with("name", value))
    assert [i.path for i in issues] == ["name"]
    assert "e.g." in issues[0].message  # a fix, not only a complaint


@pytest.mark.parametrize("field", ["partition", "account", "qos"])
@pytest.mark.parametrize("value", [v for v in HOSTILE if v not in (".hidden",)])
def test_slurm_words_are_refused_unless_they_need_no_quoting(field, value):
    issues = _issues(_with(f"launcher.{field}", value))
    assert [i.path for i in issues] == [f"launcher.{field}"]


@pytest.mark.parametrize("field,value", [("name", "tiny-vla_2.0"), ("launcher.partition", "gpu,gpu-long"),
                                         ("launcher.account", "proj_42"), ("launcher.qos", "high.prio"),
                                         ("description", "two lines\nof text\twith a tab")])
def test_ordinary_values_still_load(field, value):
    load(_with(field, value))


@pytest.mark.parametrize("value", ["a\x1b[31mred", "\u202eevil", "a\x00b", "x" * 5000])
def test_descriptions_refuse_control_characters_and_huge_texts(value):
    assert [i.path for i in _issues(_with("description", value))] == ["description"]


@pytest.mark.parametrize("key", ["a.b", "a b", "1st", "", "x-y", "../m"])
def test_modality_names_are_identifiers(key):
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["modalities"][key] = data["modalities"].pop("action")
    issues = _issues(data)
    assert any(i.path.startswith("modalities") and "not a valid modality name" in i.message for i in issues)


@pytest.mark.parametrize("value", ["a\nb", "../x", "a;b"])
def test_mixture_names_are_names(value):
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data["data"]["mixture"][0]["name"] = value
    assert [i.path for i in _issues(data)] == ["data.mixture[0].name"]
