"""The picture of a lowered graph: files, content, determinism, and `vlac compile --report`."""

import xml.etree.ElementTree as ET
from pathlib import Path

from typer.testing import CliRunner

import vlac
from vlac.cli import app
from vlac.compiler.graph_report import write_graph_report

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_report_files_are_readable_and_deterministic(tmp_path):
    g = vlac.lower(vlac.load(EXAMPLES / "vla_10b_moe_h100.yaml"))
    paths = write_graph_report(g, tmp_path / "a")
    assert [p.name for p in paths] == ["graph.html", "graph-layers.svg", "graph-block-moe.svg"]
    for p in paths[1:]:
        root = ET.parse(p).getroot()
        assert root.tag.endswith("svg") and len(root) > 10
    page = paths[0].read_text()
    assert "layers 1–22 (moe), each of 22" in page  # identical layers folded into one row
    assert "attention" in page and "FP8" in page and "<script" not in page and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    block = paths[2].read_text()
    for node in ("wq", "scaled_dot_product_attention", "bmm", "linear"):  # GEMMs, attention, router
        assert f">{node}<" in block
    again = write_graph_report(g, tmp_path / "b")
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


def test_every_block_signature_gets_a_drawing(tmp_path):
    g = vlac.lower(vlac.load(EXAMPLES / "flamingo.yaml", profile="tiny"))
    names = {p.name for p in write_graph_report(g, tmp_path)}
    assert {f"graph-block-{sig}.svg" for sig in g.blocks} <= names and len(g.blocks) == 2


def test_compile_writes_the_report(tmp_path):
    result = CliRunner().invoke(app, ["compile", str(EXAMPLES / "tiny_vla.yaml"), "--graph", "--report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "graph.html").is_file() and (tmp_path / "graph-block-moe.svg").is_file()
    assert "Per-layer costs" in result.output
