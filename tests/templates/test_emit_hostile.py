"""Hostile strings in every free-text field reach the emitted files only as literals, files stay in
the program folder, and writing is atomic with a vlac error (naming the path) when it fails.

Validation is bypassed (model_copy(update=...)) so that the emitter is tested as the second line of
defence, whatever the spec validation lets through."""

import ast
import errno
import subprocess
from pathlib import Path

import pytest

import vlac
from vlac.templates import emit as emit_mod
from vlac.templates.emit import EmitError, confined, directive_word, render

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
PAYLOAD = "x'; touch PWNED; echo '\"; $(touch PWNED) `touch PWNED` \"\"\"); __import__('os').system('touch PWNED') #"
ONE_LINE = PAYLOAD                       # reaches Slurm directives: quoted, not refused
NEWLINE = "debug\ntouch PWNED\n#"        # cannot be quoted in a directive: refused with the field named


@pytest.fixture(scope="module")
def tiny():
    exp = vlac.load(TINY)
    return exp, vlac.plan(exp).to_json()


def _hostile(exp, field, value):
    if field == "name":
        return exp.model_copy(update={"name": value})
    launcher = exp.launcher.model_copy(update={field.split(".")[1]: value, "kind": "slurm"})
    return exp.model_copy(update={"launcher": launcher})


FIELDS = ["name", "launcher.partition", "launcher.account", "launcher.qos"]


@pytest.mark.parametrize("field", FIELDS)
def test_one_line_payload_stays_quoted_and_runs_nothing(tmp_path, tiny, field):
    exp, plan = tiny
    d = render(_hostile(exp, field, ONE_LINE), plan, tmp_path / "prog", "test")
    sbatch = (d / "slurm.sbatch").read_text()
    subprocess.run(["bash", "-n", str(d / "slurm.sbatch")], check=True)
    directive = [line for line in sbatch.splitlines() if "PWNED" in line]
    assert len(directive) == 1 and directive[0].startswith("#SBATCH --")
    assert directive[0].split("=", 1)[1] == directive_word(ONE_LINE, field)  # the shell-quoted form
    # the shell parts of the script run (srun replaced by echo): nothing of the payload executes
    shell = sbatch.replace("srun ", "echo ")
    subprocess.run(["bash", "-c", shell], cwd=tmp_path, check=True, capture_output=True)
    for name in ("train.py", "launch.py"):
        ast.parse((d / name).read_text())
    if field == "name":
        tree = ast.parse((d / "train.py").read_text())
        assert ONE_LINE in [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
        assert "PWNED" not in (d / "README.md").read_text().split("`")[0]  # only inside the code span
    assert not list(tmp_path.rglob("PWNED"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prog"]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("bad", [NEWLINE, "a\rb", "a\x00b", "a\x1bb"])
def test_control_characters_in_a_directive_are_refused_with_the_field(tmp_path, tiny, field, bad):
    exp, plan = tiny
    with pytest.raises(EmitError, match=field.replace(".", r"\.") + ".*control character"):
        render(_hostile(exp, field, bad), plan, tmp_path / "prog", "test")
    assert not (tmp_path / "prog" / "plan.json").exists()
    assert not list(tmp_path.rglob("PWNED"))


def test_emit_cli_reports_a_newline_as_a_vlac_error(tmp_path, tiny, monkeypatch):
    exp, plan = tiny
    with pytest.raises(EmitError):
        render(_hostile(exp, "launcher.qos", NEWLINE), plan, tmp_path / "p", "test")
    assert issubclass(EmitError, ValueError)  # the CLI turns ValueErrors into a message and exit 2


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/../../b", "sub/x"])
def test_file_names_are_confined_to_the_folder(tmp_path, name):
    if name == "sub/x":
        (tmp_path / "sub").mkdir()
        assert confined(tmp_path, name) == (tmp_path / "sub" / "x").resolve()
        return
    with pytest.raises(EmitError, match="outside the program directory"):
        confined(tmp_path, name)


def test_a_hostile_name_writes_nothing_outside_the_folder(tmp_path, tiny):
    exp, plan = tiny
    out = tmp_path / "out"
    for name in ("../../escape", "/tmp/vlac-hostile-abs", "..", "."):
        render(exp.model_copy(update={"name": name}), plan, out, "test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "experiment.yaml", "launch.py", "plan.json", "slurm.sbatch", "train.py"])
    assert not Path("/tmp/vlac-hostile-abs").exists()


def _read_only(ro: Path, monkeypatch) -> None:
    """A read-only folder: chmod, and (root ignores modes) creating files in it fails as it would."""
    import os
    import tempfile

    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and Path(dir).resolve() == ro.resolve():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*a, dir=dir, **k)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_read_only_folder_gives_a_vlac_error_naming_the_path(tmp_path, tiny, monkeypatch):
    exp, plan = tiny
    ro = tmp_path / "ro"
    _read_only(ro, monkeypatch)
    try:
        with pytest.raises(EmitError, match=str(ro)):
            render(exp, plan, ro, "test")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_full_disk_leaves_no_half_written_plan(tmp_path, tiny, monkeypatch):
    exp, plan = tiny
    d = render(exp, plan, tmp_path / "p", "test")
    good = (d / "plan.json").read_bytes()
    real_fdopen = emit_mod.os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):  # half the bytes reach the disk, then it is full
            self.f.write(text[: len(text) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(emit_mod.os, "fdopen", lambda *a, **k: Full(real_fdopen(*a, **k)))
    changed = plan | {"predicted": plan["predicted"] | {"mfu": 0.5}}
    with pytest.raises(EmitError, match="disk is full") as e:
        render(exp, changed, d, "test")
    assert str(d) in str(e.value)
    assert (d / "plan.json").read_bytes() == good  # the old plan, whole
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_emit_cli_read_only_is_a_message_not_a_traceback(tmp_path, tiny, monkeypatch):
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from vlac import api
    from vlac.cli import app

    plan = SimpleNamespace(feasible=True, runtime={}, to_json=lambda: tiny[1])
    monkeypatch.setattr(api, "plan", lambda *a, **k: plan)  # the fixture's plan: planned once per module
    ro = tmp_path / "ro"
    _read_only(ro, monkeypatch)
    try:
        r = CliRunner().invoke(app, ["emit", str(TINY), "-o", str(ro)])
    finally:
        ro.chmod(0o755)
    text = " ".join(r.output.split())
    assert r.exit_code == 2, r.output
    assert "Traceback" not in text and "cannot write" in text and ro.name in text
    assert not (ro / "plan.json").exists()


@pytest.mark.parametrize("field", FIELDS)
def test_submit_to_slurm_refuses_a_newline_before_submitit_writes_it(tmp_path, tiny, field):
    from vlac.submission import _slurm_executor

    exp, _ = tiny
    with pytest.raises(EmitError, match=field.replace(".", r"\.")):
        _slurm_executor(_hostile(exp, field, NEWLINE), 1, tmp_path / "submitit", 10, 0, {})
    assert not list(tmp_path.rglob("*.sh"))
