"""The CLI prints every spec problem as a message (exit 2), never a traceback, whatever the
message quotes: rich markup in user input is printed as text, not interpreted."""

from pathlib import Path

import pytest

from cli_checks import refused_cleanly

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "examples" / "tiny_vla.yaml")


@pytest.mark.parametrize("override,shown", [("backbone.[/x]=1", "[/x]"), ("name=[/bold]", "[/bold]"),
                                            ("launcher.qos=[red]x[/red]", "[red]x[/red]")])
def test_markup_in_a_message_is_printed_not_interpreted(override, shown):
    refused_cleanly(["validate", TINY, "--set", override], shown)


@pytest.mark.parametrize("name,content,says", [
    ("bomb.yaml", "a: &a [1,2,3,4,5,6,7,8,9]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")), "alias"),
    ("deep.yaml", "a: " + "[" * 3000 + "]" * 3000 + "\n", "nested deeper"),
    ("bin.yaml", b"name: \xff\n", "not UTF-8"),
    ("empty.yaml", "", "the file is empty"),
])
def test_hostile_files_fail_validate_and_compile_cleanly(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for command in ("validate", "compile"):
        refused_cleanly([command, str(path)], says, str(path))


def test_a_bad_override_names_the_override():
    r = refused_cleanly(["validate", TINY, "--set", "nosuch=3"], "command-line overrides", "--set nosuch=3")
    assert TINY not in r.stderr


def test_empty_special_tokens_fail_validate_not_compile():
    refused_cleanly(["validate", TINY, "--set", "vocab.special_tokens=[]"], "vocab.special_tokens")


@pytest.mark.parametrize("cluster,field", [("cluster:\n  nodes: 1099511627776\n", "cluster.nodes"),
                                           ("cluster:\n  gpu: {memory_bandwidth: 0}\n", "cluster.gpu.memory_bandwidth"),
                                           ("cluster:\n  gpu: {memory: .nan}\n", "gpu.memory")])
def test_a_cluster_file_is_bounded_like_a_spec_cluster(tmp_path, cluster, field):
    path = tmp_path / "cluster.yaml"
    path.write_text(cluster)
    refused_cleanly(["compile", TINY, "--cluster", str(path)], field, str(path))


def test_a_search_space_syntax_error_names_the_space_file(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  moe.experts: [8, 16\n")
    r = refused_cleanly(["search", TINY, "--space", str(space), "-o", str(tmp_path / "out")],
                       f"1 problem in {space}:", f'in "{space}", line 2')
    assert "<spec>" not in r.stderr and "<unicode string>" not in r.stderr
