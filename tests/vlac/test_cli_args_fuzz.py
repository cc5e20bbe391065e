"""A seeded fuzz of `vlac validate/compile` arguments (--set KEY=VALUE with odd YAML values and
paths that do not exist, --pin, --profile, --cluster): every input ends with exit 0 or 2, never a
traceback or an internal error, and the same input prints the same bytes twice. The full
campaign that found the bugs these tests pin (a few thousand inputs) was this loop with more
seeds; 200 inputs here keep it a few seconds."""

import random
from pathlib import Path

import yaml

from vlac.cli import app

from cli_checks import runner

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "examples" / "tiny_vla.yaml")

VALUES = ["&a [1, *a]", "*x", "!!python/object/apply:os.system ['true']", "!!binary aGVsbG8=", "!!set {a, b}", "2024-01-01",
          ".nan", "-.inf", "1e400", "9" * 5000, "0x1F", "1:20:30", "~", "", "[]", "{}", "[" * 40 + "]" * 40, "x" * 20000,
          "héllo ☃ 𝄞", "\x00", "'unterminated", "{a: 1, a: 2}", "$(touch /tmp/vlac_fuzz_canary)", "[/x]", "{0}", "a\nb",
          "{1: 2}", "---\n1\n---\n2", "true", "-1", "2.0", "4M", str(2**64)]
EXTRA_KEYS = ["a..b", "a[", "data.mixture[5].weight", "data.mixture[x].weight", "data.mixture.0.weight", "modalities[0]",
              "backbone.layers.x", "backbone.layers[0]", "cluster.gpu", "cluster.network", "profiles.tiny", "[0]", " "]
PINS = ["tp=2", "tp=²", "tp=" + "9" * 30, "pp=0", "zero=true", "schedule=x", "dp", "=", "tp:2", "recompute=full,tp=1"]
PROFILES = ["tiny", "", "TINY", "[/x]", "x" * 300]
CLUSTERS = ["h100-sxm", "a100-80gb", "nope", "", "/dev/null", "/nonexistent.yaml", "/tmp/" + "x" * 300 + ".yaml"]


def _keys() -> list[str]:
    keys = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        if path:
            keys.append(path)
    walk(yaml.safe_load(Path(TINY).read_text()), "")
    return keys + EXTRA_KEYS


def _inputs(seed: int, n: int) -> list[list[str]]:
    rng, keys, out = random.Random(seed), _keys(), []
    for _ in range(n):
        args = ["validate", TINY]
        for _ in range(rng.choice([1, 1, 2])):
            args += ["--set", f"{rng.choice(keys)}={rng.choice(VALUES)}"]
        roll = rng.random()
        if roll < 0.1:
            args += ["--profile", rng.choice(PROFILES)]
        elif roll < 0.15:  # compile is ten times dearer than validate: a few
            args = ["compile", TINY, "--json", "--pin", rng.choice(PINS), "--cluster", rng.choice(CLUSTERS)]
        out.append(args)
    return out


def test_hostile_arguments_end_in_exit_0_or_2_with_a_message(tmp_path):
    canary = Path("/tmp/vlac_fuzz_canary")
    canary.unlink(missing_ok=True)
    failures = []
    for args in _inputs(seed=20261206, n=200):
        r = runner.invoke(app, args)
        crashed = r.exception is not None and not isinstance(r.exception, SystemExit)
        if crashed or r.exit_code not in (0, 2) or "Traceback" in r.output or "internal error" in r.output:
            failures.append((args, r.exit_code, r.output[-300:]))
    assert not failures, failures[:3]
    assert not canary.exists()  # a value is data, never a command


def test_the_same_arguments_print_the_same_bytes():
    for args in _inputs(seed=7, n=20):
        first, second = runner.invoke(app, args), runner.invoke(app, args)
        assert (first.exit_code, first.output) == (second.exit_code, second.output), args
