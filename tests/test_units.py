import pytest

from oomladder.errors import UsageError
from oomladder.units import format_size, parse_duration, parse_size


@pytest.mark.parametrize("text, expected", [
    ("1200MiB", 1200 * 2**20), ("16GiB", 16 * 2**30), ("1.5G", int(1.5 * 2**30)), ("800M", 800 * 2**20),
    ("2GB", 2 * 10**9), ("1073741824", 2**30), ("512k", 512 * 1024), (" 4 GiB ", 4 * 2**30),
])
def test_sizes_read_as_people_write_them(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "12 parsecs", "GiB", "-1G", "0", "1.2.3G", "lots"])
def test_a_malformed_size_says_what_is_accepted(text):
    with pytest.raises(UsageError, match="write it like 1200MiB"):
        parse_size(text)


def test_sizes_print_in_pytorchs_units():
    assert format_size(None) == "-"
    assert format_size(500 * 2**20) == "500 MiB"
    assert format_size(1.5 * 2**30) == "1.5 GiB"
    assert format_size(12) == "12 B"


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("8h", 28800), ("1.5h", 5400)])
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0", "5 fortnights"])
def test_a_malformed_duration_says_what_is_accepted(text):
    with pytest.raises(UsageError, match="write it like 90s, 30m or 8h"):
        parse_duration(text)
