import pytest

from vlac.spec.units import parse_bandwidth, parse_bytes, parse_count, parse_duration, parse_flops


@pytest.mark.parametrize("text,value", [(4096, 4096), ("4M", 4_000_000), ("4Mi", 4 * 2**20), ("10T", 10**13),
                                        ("2.5B", 2_500_000_000), ("16Ki", 16384)])
def test_counts(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text,value", [("80GB", 80e9), ("64GiB", 64 * 2**30), (1e9, 1e9)])
def test_bytes(text, value):
    assert parse_bytes(text) == value


def test_bandwidth_bits_and_bytes():
    assert parse_bandwidth("400Gb/s") == 50e9
    assert parse_bandwidth("450GB/s") == 450e9
    assert parse_bandwidth("3.35TB/s") == pytest.approx(3.35e12)


def test_flops_and_durations():
    assert parse_flops("989TFLOPS") == 989e12
    assert parse_flops("1979 TFLOP/s") == 1979e12
    assert parse_duration("4h") == 14400
    assert parse_duration("1d12h") == 129600
    assert parse_duration("02:00:00") == 7200
    assert parse_duration("30min") == 1800


@pytest.mark.parametrize("fn,bad", [(parse_count, "4Q"), (parse_count, "-3"), (parse_count, "1.5"),
                                    (parse_bytes, "80"), (parse_bandwidth, "400Gb"), (parse_duration, "soon"),
                                    (parse_count, True)])
def test_bad_quantities_name_the_accepted_forms(fn, bad):
    with pytest.raises(ValueError, match="e.g."):
        fn(bad)
