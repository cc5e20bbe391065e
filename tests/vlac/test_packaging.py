"""The wheel carries every subpackage and the templates (an editable install hides a missing one)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAPPED = {"spec": "vlac/spec", "compiler": "vlac/compiler", "runtime": "vlac/runtime", "templates": "vlac/templates",
          "vlac": "vlac"}


@pytest.mark.slow
def test_wheel_contains_every_package_and_template(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("vlac-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder, target in MAPPED.items():
        for f in (ROOT / folder).rglob("*"):
            if f.suffix in (".py", ".j2") and "__pycache__" not in f.parts:
                expected.add(f"{target}/{f.relative_to(ROOT / folder).as_posix()}")
    missing = sorted(expected - names)
    assert not missing, f"the wheel drops {missing}: list their packages in pyproject.toml"
