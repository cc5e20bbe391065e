"""Every error points to the place that is wrong: the override, the list item, the file."""

from pathlib import Path

import pytest
import yaml

from vlac.spec import SpecError, load, read_mapping

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"


def _error(source, *overrides) -> SpecError:
    with pytest.raises(SpecError) as info:
        load(source, overrides)
    return info.value


@pytest.mark.parametrize("override,path", [("nosuch=3", "nosuch"), ("backbone.layrs=3", "backbone.layrs"),
                                           ("backbone.layers=abc", "backbone.layers"),
                                           ("backbone.foo.bar=1", "backbone.foo"),
                                           ("backbone.layers.x=3", "backbone.layers")])
def test_a_bad_override_is_reported_as_the_override_not_the_file(override, path):
    err = _error(TINY, override)
    assert [(i.path, i.origin) for i in err.issues] == [(path, f"--set {override}")]
    header = str(err).splitlines()[0]
    assert "command-line overrides" in header and str(TINY) not in header
    assert f"--set {override}" in str(err)


def test_a_file_problem_next_to_an_override_keeps_the_file():
    data = yaml.safe_load(TINY.read_text())
    data["backbone"]["layrs"] = 3
    err = _error(data, "optimizer.lr=-1")
    by_path = {i.path: i.origin for i in err.issues}
    assert by_path == {"backbone.layrs": "", "optimizer.lr": "--set optimizer.lr=-1"}
    assert str(err).startswith("2 problems in <mapping>")


def test_list_fields_keep_their_index():
    data = yaml.safe_load(TINY.read_text())
    data["data"]["mixture"].append({"name": "more", "modalities": 5})
    assert [i.path for i in _error(data).issues] == ["data.mixture[1].modalities"]
    data["data"]["mixture"][1]["modalities"] = ["nosuch"]
    assert [i.path for i in _error(data).issues] == ["data.mixture[1].modalities"]
    data["data"]["mixture"][1] = {"name": "more", "modalities": ["text"], "wieght": 2}
    issue = _error(data).issues[0]
    assert issue.path == "data.mixture[1].wieght" and "did you mean 'weight'" in issue.message


def test_an_empty_file_says_it_is_empty(tmp_path):
    empty = tmp_path / "exp.yaml"
    empty.write_text("")
    err = _error(empty)
    assert "the file is empty" in str(err) and "NoneType" not in str(err) and str(empty) in str(err)


def test_a_space_file_syntax_error_is_labelled_with_its_file(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  moe.experts: [8, 16\n")
    with pytest.raises(SpecError) as info:
        read_mapping(space)
    text = str(info.value)
    assert text.startswith(f"1 problem in {space}:") and "<spec>" not in text and "<unicode string>" not in text
    assert f'in "{space}", line' in text  # the YAML mark names the file too
