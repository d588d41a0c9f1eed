"""Sizes parsed and printed one way: parse_size (decimal and binary units) and the human-readable forms."""

from __future__ import annotations

import pytest

from hubtools.errors import HubtoolsError, InvalidValueError
from hubtools.units import human_bytes, human_count, parse_size, size_both


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5GB", 5_000_000_000),
        ("5gb", 5_000_000_000),
        (" 2GiB ", 2 * 2**30),
        ("500MiB", 500 * 2**20),
        ("1.5KB", 1500),
        ("10KiB", 10_240),
        ("1TB", 10**12),
        ("1TiB", 2**40),
        ("123B", 123),
        ("4096", 4096),
        (9_000_000, 9_000_000),
    ],
)
def test_sizes_parse_in_decimal_and_binary_units(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lots", "'lots': expected a size such as 5GB, 500MB or 2GiB"),
        ("5XB", "'5XB': expected a size such as 5GB, 500MB or 2GiB"),
        ("GB", "'GB': expected a size such as 5GB, 500MB or 2GiB"),
        ("0GB", "'0GB': expected a positive size"),
        ("-1MB", "'-1MB': expected a positive size"),
        (0, "'0': expected a positive size"),
        ("nan", "'nan': expected a positive size"),
        ("inf", "'inf': expected a positive size"),
        (True, "'True': expected a size such as 5GB, 500MB or 2GiB"),
    ],
)
def test_a_bad_size_is_an_invalid_value_naming_it(text: str | int, message: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        parse_size(text)
    assert str(info.value) == message
    assert isinstance(info.value, HubtoolsError) and isinstance(info.value, ValueError)


def test_sizes_and_counts_print_in_the_units_they_parse_from() -> None:
    assert parse_size(human_bytes(5_000_000_000).replace(" ", "")) == 5_000_000_000
    assert parse_size(human_bytes(3 * 2**30, binary=True).replace(" ", "")) == 3 * 2**30
    assert size_both(2**30) == "1.1 GB (1.0 GiB)"
    assert (human_bytes(999), human_bytes(1000), human_count(999), human_count(1000)) == (
        "999 B",
        "1.00 KB",
        "999",
        "1.00K",
    )
