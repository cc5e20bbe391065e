"""Hostile command-line paths (found by fuzzing the CLI): an output path that cannot be written is
a message naming the option (exit 2), never a traceback or an "internal error"; `vlac emit`
writes only into a new, empty or earlier-program folder, so nothing of the user's is replaced."""

from pathlib import Path

import pytest

from vlac.cli import app

from cli_checks import refused_cleanly, runner

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "examples" / "tiny_vla.yaml")


@pytest.mark.parametrize("target", ["folder", "missing_parent"])
def test_schema_to_an_unwritable_path_names_the_option(tmp_path, target):
    path = tmp_path if target == "folder" else tmp_path / "no" / "such" / "schema.json"
    refused_cleanly(["schema", "-o", str(path)], "--out", "cannot write")


def test_compile_report_onto_a_file_names_the_option(tmp_path):
    existing = tmp_path / "plan.txt"
    existing.write_text("mine")
    refused_cleanly(["compile", TINY, "--report", str(existing)], "--report", "cannot write")
    assert existing.read_text() == "mine"


def test_emit_into_a_folder_of_other_files_replaces_nothing(tmp_path):
    (tmp_path / "README.md").write_text("my notes")
    (tmp_path / "train.py").write_text("my trainer")
    refused_cleanly(["emit", TINY, "-o", str(tmp_path)], "--out", "README.md", "not a vlac program")
    assert (tmp_path / "README.md").read_text() == "my notes"
    assert (tmp_path / "train.py").read_text() == "my trainer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "train.py"]


def test_emit_onto_a_file_isrefused_cleanly(tmp_path):
    existing = tmp_path / "x.yaml"
    existing.write_text("keep")
    refused_cleanly(["emit", TINY, "-o", str(existing)], "--out", "is a file")
    assert existing.read_text() == "keep"


def test_emit_into_an_empty_folder_and_again_into_its_program(tmp_path):
    out = tmp_path / "prog"
    out.mkdir()
    for _ in range(2):  # the second emit replaces the first program's own files
        r = runner.invoke(app, ["emit", TINY, "-o", str(out)])
        assert r.exit_code == 0, r.output
    assert (out / "plan.json").is_file()


@pytest.mark.parametrize("plan,says", [("{", "not valid JSON"), ("[1]", "plan.dp"),
                                       ('{"plan": {"dp": 1, "tp": 1, "pp": "1", "cp": 1}}', "plan.pp"),
                                       (None, "no plan in this folder")])
def test_submit_of_a_folder_with_a_broken_plan_names_the_file(tmp_path, plan, says):
    (tmp_path / "experiment.yaml").write_text(Path(TINY).read_text())
    if plan is not None:
        (tmp_path / "plan.json").write_text(plan)
    r = refused_cleanly(["submit", str(tmp_path), "--executor", "debug", "--no-wait"], says)
    assert str(tmp_path / "plan.json") in " ".join(r.stderr.split())


TOKENIZER_SPEC = """name: tok
modalities:
  text: {kind: text, tokenizer: byte, vocab_size: 256, tokens: 12}
  image: {kind: image, image_size: 8, channels: 1, patch_size: 4, codebook_size: 16, codebook_dim: 4}
backbone: {layers: 1, hidden: 32, heads: 2, ffn_hidden: 64, context_length: 32}
data: {mixture: [{name: d, modalities: [text, image], generator: digits}]}
train: {seq_len: 32, global_batch_tokens: 256, total_tokens: 2560}
"""


@pytest.mark.parametrize("where", ["a_file", "below_a_file"])
def test_tokenizer_train_into_an_unwritable_folder_names_the_option(tmp_path, where):
    spec = tmp_path / "spec.yaml"
    spec.write_text(TOKENIZER_SPEC)
    blocker = tmp_path / "blocker"
    blocker.write_text("keep")
    out = blocker if where == "a_file" else blocker / "sub"
    refused_cleanly(["tokenizer", "train", str(spec), "-m", "image", "--steps", "1", "--batch", "2", "-o", str(out)],
             "--out", "cannot create the folder")
    assert blocker.read_text() == "keep"
