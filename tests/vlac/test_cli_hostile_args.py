"""Hostile command-line arguments found by fuzzing `vlac` (seeded; see the commits that added
each case): every one is refused with exit 2 and a message naming the argument, never a
traceback, an "internal error" or Python's own wording."""

from pathlib import Path

import pytest

from vlac.cli import app

from cli_checks import refused_cleanly, runner

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "examples" / "tiny_vla.yaml")


@pytest.mark.parametrize("pin,says", [
    ("tp=²", "pin tp='²': give a positive integer"),  # str.isdigit() takes it, int() did not
    ("tp=" + "9" * 5000, "--pin tp: a number of 5,000 digits"),  # beyond int()'s 4,300-digit limit
    ("pp=" + "9" * 19, "--pin pp: a number of 19 digits"),
])
def test_a_pin_value_that_is_no_whole_number_names_the_pin(pin, says):
    r = refused_cleanly(["compile", TINY, "--json", "--pin", pin], says)
    assert "invalid literal" not in r.stderr and "set_int_max_str_digits" not in r.stderr


LONG = "x" * 300  # one path component longer than the 255 bytes Linux allows (ENAMETOOLONG)


@pytest.mark.parametrize("args", [
    ["validate", f"/tmp/{LONG}.yaml"],
    ["prepare", f"/tmp/{LONG}.yaml"],
    ["tokenizer", "train", f"/tmp/{LONG}.yaml", "--modality", "text"],
    ["submit", f"/tmp/{LONG}.yaml", "--executor", "debug"],
    ["search", TINY, "--space", f"/tmp/{LONG}.yaml", "-o", "unused"],
])
def test_a_spec_path_too_long_for_the_system_says_so(args):
    # pathlib's is_file() raised OSError here: an internal error, or a traceback in prepare/tokenizer
    refused_cleanly(args, "cannot use the path", "File name too long")


@pytest.mark.parametrize("args,says", [
    (["compile", TINY, "--cluster", f"/tmp/{LONG}.yaml"], "is neither a preset"),
    (["emit", TINY, "-o", f"/tmp/{LONG}"], "--out"),
    (["export", f"/tmp/{LONG}", "--hf", "unused"], "is not a folder"),
    (["validate", TINY, "--set", f"backbone.init.hf=/tmp/{LONG}"], "(backbone.init.hf): no config.json"),
])
def test_other_paths_too_long_for_the_system_are_refused_naming_them(args, says):
    refused_cleanly(args, says)


def test_a_folder_or_a_device_given_as_the_spec_is_called_what_it_is(tmp_path):
    folder = tmp_path / "spec.yaml"
    folder.mkdir()
    refused_cleanly(["validate", str(folder)], "is a folder, not a file")
    refused_cleanly(["validate", "/dev/null"], "is not a regular file")


@pytest.mark.parametrize("args", [["prepare", TINY], ["tokenizer", "train", TINY, "--modality", "text"]])
def test_an_unexpected_error_in_prepare_or_tokenizer_train_is_one_message(monkeypatch, args):
    # they caught only SpecError from loading: any other error (a ValueError of the path, a bug)
    # escaped as a traceback, where the other commands print one line naming the bug (exit 1)
    import vlac.cli

    def broken(*_):
        raise RuntimeError("boom")

    monkeypatch.setattr(vlac.cli, "_load", broken)
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "internal error RuntimeError: boom" in r.stderr and "Traceback" not in r.output


def test_an_empty_profile_name_is_refused_not_ignored():
    # `--profile ""` validated the full-size spec as if no profile were given
    refused_cleanly(["validate", str(ROOT / "examples" / "llava.yaml"), "--profile", ""],
                    "no profile ''; this spec defines ['tiny']")


@pytest.mark.parametrize("content,says", [("", "the file is empty"), ("5\n", "the file holds 5 (an integer) at the top level"),
                                          ("- a\n", "the file holds ['a'] (a list) at the top level")])
@pytest.mark.parametrize("command,holds", [
    (lambda f: ["compile", TINY, "--cluster", f], "a cluster file is a mapping, e.g. `cluster: {preset"),
    (lambda f: ["search", TINY, "--space", f, "-o", "unused"], "a space file is a mapping, e.g. `space:"),
    (lambda f: ["validate", f], "a spec is a mapping, e.g. `name: my-run`"),
])
def test_an_empty_or_non_mapping_file_is_explained_as_what_it_should_be(tmp_path, content, says, command, holds):
    # a --cluster or space file was told "a spec is a mapping, e.g. `name: my-run` ..." ("got a int")
    path = tmp_path / "file.yaml"
    path.write_text(content)
    r = refused_cleanly(command(str(path)), says, holds)
    assert "got a int" not in r.stderr
