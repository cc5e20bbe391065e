import ast
import filecmp
import subprocess
import sys
from pathlib import Path


import vlac

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"


def test_same_input_gives_byte_identical_program(tmp_path):
    exp = vlac.load(TINY)
    a = vlac.emit(exp, vlac.plan(exp), tmp_path / "a")
    b = vlac.emit(vlac.load(TINY), vlac.plan(vlac.load(TINY)), tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == ["README.md", "experiment.yaml", "launch.py", "plan.json", "slurm.sbatch", "train.py"]
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors


def test_program_files_parse_and_reload(tmp_path):
    exp = vlac.load(TINY)
    d = vlac.emit(exp, vlac.plan(exp), tmp_path / "p")
    for name in ("train.py", "launch.py"):
        ast.parse((d / name).read_text())
    assert vlac.load(d / "experiment.yaml") == exp


# one line: a newline cannot be quoted in the batch script's directives, and emit refuses it
# (tests/templates/test_emit_hostile.py); the docstring and string breakouts are tried here
HOSTILE = "x'); __import__('os').system('touch PWNED'); (\"\"\"\" #"


def test_hostile_strings_stay_literals(tmp_path):
    plain = vlac.load(TINY)
    exp = plain.model_copy(update={"name": HOSTILE})  # past validation: the emitter must be safe alone
    d = vlac.emit(exp, vlac.plan(plain), tmp_path / "p")
    src = (d / "train.py").read_text()
    tree = ast.parse(src)
    # the name appears once, as a string constant, and nothing calls __import__
    consts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert exp.name in consts
    assert not any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "__import__" for n in ast.walk(tree))
    # importing the program (without running main) executes nothing of the name
    subprocess.run([sys.executable, "-c", f"import runpy; runpy.run_path({str(d / 'train.py')!r})"],
                   cwd=tmp_path, check=True)
    subprocess.run([sys.executable, str(d / "launch.py"), "--help"], cwd=tmp_path, check=True, capture_output=True)
    assert not (tmp_path / "PWNED").exists()
    sbatch = (d / "slurm.sbatch").read_text()
    assert "\n#SBATCH --job-name='" in sbatch


def test_launch_help_lists_the_executors_without_importing_torch(tmp_path):
    # the user's first command on an emitted program: its --help must not pay for the compiler,
    # torch and submitit (several seconds), which only submitting needs
    d = vlac.emit(vlac.load(TINY), vlac.plan(vlac.load(TINY)), tmp_path / "p")
    probe = ("import runpy, sys\nsys.argv = ['launch.py', '--help']\n"
             f"try:\n    runpy.run_path({str(d / 'launch.py')!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('heavy:', sorted(m for m in ('torch', 'submitit', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    assert "{local,slurm,debug}" in out
    assert "heavy: []" in out, out
