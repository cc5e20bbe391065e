"""vlac.emit() (the Python API) refuses, like `vlac emit -o`, a folder holding other files: the user's
README.md or train.py must never be replaced. New, empty and earlier-program folders are written."""

from pathlib import Path

import pytest

import vlac
from vlac.templates.emit import EmitError, program_folder_problem

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny_vla.yaml"


@pytest.fixture(scope="module")
def tiny():
    exp = vlac.load(TINY)
    return exp, vlac.plan(exp)


def test_api_refuses_a_folder_of_other_files_and_leaves_them(tmp_path, tiny):
    exp, plan = tiny
    (tmp_path / "README.md").write_text("mine\n")
    with pytest.raises(EmitError) as e:
        vlac.emit(exp, plan, tmp_path)
    message = str(e.value)
    assert message.startswith(f"out_dir {tmp_path}:") and "README.md" in message and "new or empty folder" in message
    assert (tmp_path / "README.md").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


def test_api_refuses_a_file(tmp_path, tiny):
    exp, plan = tiny
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="it is a file, not a folder"):
        vlac.emit(exp, plan, tmp_path / "f")


def test_api_writes_new_empty_and_earlier_program_folders(tmp_path, tiny):
    exp, plan = tiny
    new = vlac.emit(exp, plan, tmp_path / "new" / "prog")
    assert (new / "plan.json").is_file()
    (tmp_path / "empty").mkdir()
    assert (vlac.emit(exp, plan, tmp_path / "empty") / "train.py").is_file()
    (new / "notes.txt").write_text("kept")  # an earlier program: re-emitting replaces only vlac's files
    again = vlac.emit(exp, plan, new)
    assert (again / "notes.txt").read_text() == "kept"


def test_one_rule_for_cli_and_api(tmp_path):
    (tmp_path / "x").write_text("")
    assert program_folder_problem(tmp_path).startswith("the folder holds other files (x)")
    assert program_folder_problem(tmp_path / "missing") is None
