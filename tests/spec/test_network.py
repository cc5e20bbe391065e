"""The cluster's interconnect as typed spec fields: a fabric and a GPU link fill the figures they
imply, written figures win, bad names are reported with the field and the valid choices."""

import pytest

from vlac.spec.errors import SpecError
from vlac.spec.loader import load_cluster
from vlac.spec.system import FABRICS, GPU_LINKS, PRESET_LINKS, PRESET_SOURCES, PRESETS, Cluster


@pytest.mark.parametrize("field,bad,choices", [("fabric", "ib-xdr", FABRICS), ("gpu_link", "nvlink9", GPU_LINKS)])
def test_unknown_link_names_field_and_choices(field, bad, choices):
    with pytest.raises(SpecError) as e:
        load_cluster({"network": {field: bad}}, "cluster.yaml")
    text = str(e.value)
    assert f"network.{field}" in text and bad in text
    assert all(name in text for name in choices)


def test_four_hdr_nics_per_node():
    c = load_cluster({"gpus_per_node": 8, "network": {"fabric": "ib-hdr", "nics_per_node": 4}}, "c.yaml")
    assert c.network.nic_bandwidth == FABRICS["ib-hdr"]["nic_bandwidth"] and c.network.nics_per_node == 4


def test_written_figures_win_over_the_named_link():
    c = Cluster.model_validate({"network": {"fabric": "ib-hdr", "nic_bandwidth": "100Gb/s", "gpu_link": "pcie4"},
                                "gpu": {"nvlink_bandwidth": "100GB/s"}})
    assert c.network.nic_bandwidth == 12.5e9
    assert c.gpu.nvlink_bandwidth == 100e9
    # the ring bus bandwidth follows the GPU's written link rate, not the named link's table rate
    assert c.network.nvlink_allreduce_busbw < 100e9 and c.network.nvlink_allreduce_busbw != GPU_LINKS["pcie4"]["nvlink_bandwidth"]


def test_a_named_gpu_link_sets_the_node_collectives():
    pcie = Cluster.model_validate({"network": {"gpu_link": "pcie5"}})
    assert pcie.gpu.nvlink_bandwidth == GPU_LINKS["pcie5"]["nvlink_bandwidth"]
    assert pcie.network.nvlink_allreduce_busbw < Cluster.model_validate({}).network.nvlink_allreduce_busbw


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_cites_its_figures_and_agrees_with_its_links(preset):
    assert len(PRESET_SOURCES[preset]) > 20
    link, fabric = PRESET_LINKS[preset]
    c = Cluster.model_validate({"preset": preset})
    assert (c.network.gpu_link, c.network.fabric) == (link, fabric)
    assert c.network.nic_bandwidth == FABRICS[fabric]["nic_bandwidth"]
    assert c.gpu.nvlink_bandwidth == GPU_LINKS[link]["nvlink_bandwidth"]


@pytest.mark.parametrize("name", FABRICS)
def test_every_fabric_cites_the_line_rate_it_uses(name):
    entry = FABRICS[name]
    assert f"{entry['nic_bandwidth'] * 8 / 1e9:.0f} Gb/s" in entry["source"]


@pytest.mark.parametrize("name", GPU_LINKS)
def test_every_gpu_link_cites_the_rate_it_uses(name):
    """NVLink sources print both directions, PCIe's one; the table keeps one direction."""
    entry = GPU_LINKS[name]
    per_direction = entry["nvlink_bandwidth"] / 1e9
    assert (f"{2 * per_direction:.0f} GB/s" in entry["source"]
            or f"{per_direction:.0f} GB/s per direction" in entry["source"]), entry["source"]


def test_several_nodes_need_a_nic():
    with pytest.raises(SpecError) as e:
        load_cluster({"nodes": 2, "network": {"nics_per_node": 0}}, "cluster.yaml")
    assert "network.nics_per_node" in str(e.value)
    assert load_cluster({"nodes": 1, "network": {"nics_per_node": 0}}, "cluster.yaml").network.nics_per_node == 0
