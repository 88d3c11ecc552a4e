"""PBS size parsing and the per-process memory division."""
import pytest
from hypothesis import given, strategies as st

from dask_pbs_kit import kit_cli
from dask_pbs_kit.errors import BAD_VALUE, KitError
from dask_pbs_kit.pbs_sizes import (MIN_WORKER_MEMORY, check_reserve, format_size, memory_per_process,
                                    parse_size, reserve_on_host)

GiB = 1024**3


@pytest.mark.parametrize("text, expected", [
    ("20gb", 20 * GiB), ("20G", 20 * GiB), ("20GB", 20 * GiB), ("512mb", 512 * 1024**2),
    ("1tb", 1024**4), ("4096kb", 4096 * 1024), ("1000", 1000), ("1000b", 1000),
    ("8w", 64), ("2kw", 2 * 1024 * 8), ("1p", 1024**5),
])
def test_pbs_sizes_are_powers_of_1024_in_any_case(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["1.5gb", "20GiB", "20 gb", "", "gb", "-1gb", "20xb", "1e9"])
def test_sizes_pbs_refuses_are_refused_with_advice(text):
    with pytest.raises(KitError) as err:
        parse_size(text)
    assert err.value.code == BAD_VALUE
    assert "is not a size PBS accepts" in str(err.value)
    assert "e.g. 20gb" in str(err.value)


def test_origin_example_20G_in_4_processes_is_close_to_its_hand_typed_4_5e9():
    limit = memory_per_process(parse_size("20G"), 4)
    assert limit == 4831838208  # 20 GiB less 10%, in 4
    assert abs(limit - 4.5e9) / 4.5e9 < 0.08


def test_reserve_can_be_a_size():
    assert memory_per_process(parse_size("20gb"), 2, "2gb") == 9 * GiB


def test_too_small_a_share_is_refused_with_the_numbers():
    with pytest.raises(KitError, match="for each of 8 Dask processes .the scheduler counts as one on its chunk., below the 256mb"):
        memory_per_process(GiB, 8)


@pytest.mark.parametrize("reserve", ["100%", "-5%", "x%"])
def test_a_reserve_outside_0_to_100_percent_is_refused(reserve):
    with pytest.raises(KitError, match="percentage must be in"):
        memory_per_process(20 * GiB, 1, reserve)


def test_a_hosts_reserve_is_ppm_for_a_percentage_and_bytes_per_chunk_for_a_size():
    assert reserve_on_host("10%", 3) == (100000, 0)
    assert reserve_on_host("12.5%", 1) == (125000, 0)
    assert reserve_on_host("0%", 1) == (0, 0)
    assert reserve_on_host("2gb", 3) == (0, 6 * GiB)


@pytest.mark.parametrize("reserve, message", [("1.5gb", "MEMORY_RESERVE='1.5gb': '1.5gb' is not a size"),
                                              ("100%", "percentage must be in"), ("", "is not a size")])
def test_a_bad_reserve_is_a_bad_value(reserve, message):
    with pytest.raises(KitError, match=message) as err:
        check_reserve(reserve)
    assert err.value.code == BAD_VALUE


@given(st.integers(min_value=0, max_value=2**50), st.sampled_from(["", "k", "m", "g", "t", "K", "G"]),
       st.sampled_from(["", "b", "B", "w"]))
def test_any_pbs_spelling_parses(number, scale, unit):
    factor = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[scale.lower()]
    assert parse_size(f"{number}{scale}{unit}") == number * factor * (8 if unit == "w" else 1)


@given(st.integers(min_value=0, max_value=2**60))
def test_format_size_round_trips(nbytes):
    assert parse_size(format_size(nbytes)) == nbytes


@given(st.integers(min_value=MIN_WORKER_MEMORY, max_value=2**44), st.integers(min_value=1, max_value=64),
       st.integers(min_value=0, max_value=99))
def test_limits_never_add_up_to_more_than_the_chunk(chunk, processes, percent):
    try:
        limit = memory_per_process(chunk, processes, f"{percent}%")
    except KitError:
        return  # refused as too small: nothing is launched
    assert limit >= MIN_WORKER_MEMORY
    assert limit * processes <= chunk - chunk * percent // 100


def test_memory_command_prints_bytes(capsys):
    assert kit_cli.main(["memory", "20G", "4"]) == 0
    assert capsys.readouterr().out == "4831838208\n"


def test_memory_command_refuses_a_bad_size_on_stderr(capsys):
    assert kit_cli.main(["memory", "1.5gb", "4"]) == BAD_VALUE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("dask-pbs: '1.5gb' is not a size PBS accepts")
