"""Sizes and counts, parsed and printed the same way everywhere (CLI, recipes, inspect, cards, benchmarks)."""

from __future__ import annotations

from hubtools.errors import InvalidValueError

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str | int) -> int:
    """A byte count from '5GB' (decimal), '500MiB' (binary) or a plain integer.

    Raises:
        InvalidValueError: not a size, or not positive.

    Example:
        >>> parse_size("5GB"), parse_size("500MiB"), parse_size(1024)
        (5000000000, 524288000, 1024)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip().upper()
        number = s.rstrip("KMGTIB")
        try:
            value = float(number) * _SIZE_UNITS[s[len(number) :]]
        except (KeyError, ValueError):
            raise InvalidValueError(f"'{text}': expected a size such as 5GB, 500MB or 2GiB") from None
    if not value > 0 or value == float("inf"):
        raise InvalidValueError(f"'{text}': expected a positive size")
    return int(value)


def _scaled(n: float, base: int, units: tuple[str, ...], digits: str) -> str:
    value = float(n)
    for unit in units[:-1]:
        if abs(value) < base:
            return f"{int(n)} {unit}" if unit == units[0] else f"{value:{digits}} {unit}"
        value /= base
    return f"{value:{digits}} {units[-1]}"


def human_bytes(n: int, *, binary: bool = False) -> str:
    """'3.44 GB' (decimal) or '3.20 GiB' (binary).

    Example:
        >>> human_bytes(3_435_973_836), human_bytes(3_435_973_836, binary=True), human_bytes(12)
        ('3.44 GB', '3.20 GiB', '12 B')
    """
    if binary:
        return _scaled(n, 1024, ("B", "KiB", "MiB", "GiB", "TiB"), ".2f")
    return _scaled(n, 1000, ("B", "KB", "MB", "GB", "TB"), ".2f")


def size_both(n: int) -> str:
    """Decimal then binary units, one decimal: '93.4 GB (87.0 GiB)'.

    Example:
        >>> size_both(93_405_585_408)
        '93.4 GB (87.0 GiB)'
    """
    decimal = _scaled(n, 1000, ("B", "KB", "MB", "GB", "TB"), ".1f")
    return f"{decimal} ({_scaled(n, 1024, ('B', 'KiB', 'MiB', 'GiB', 'TiB'), '.1f')})"


def human_count(n: int, *, digits: str = ".2f") -> str:
    """A parameter count with a K/M/B/T suffix.

    Example:
        >>> human_count(46_702_792_704), human_count(46_702_792_704, digits=".3g"), human_count(7)
        ('46.70B', '46.7B', '7')
    """
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:{digits}}{unit}"
    return str(n)
