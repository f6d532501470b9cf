"""Memory sizes as people write them: `1200MiB`, `16GiB`, `1.5G`, `800M`, `1073741824`.

Decimal (`GB`) and binary (`GiB`) suffixes mean what they say; a bare `G`/`M`/`K` is binary,
as in `nvidia-smi` and PyTorch's own messages, which is what people mean by "a 16G card".
"""

from __future__ import annotations

import re

from supervisor.errors import UsageError

_UNITS = {
    "": 1, "b": 1,
    "k": 2**10, "kib": 2**10, "kb": 10**3,
    "m": 2**20, "mib": 2**20, "mb": 10**6,
    "g": 2**30, "gib": 2**30, "gb": 10**9,
    "t": 2**40, "tib": 2**40, "tb": 10**12,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes in `text`; raises UsageError with an example of what is accepted."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise UsageError(f"'{text}' is not a memory size: write it like 1200MiB, 16GiB or 1.5G")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UsageError(f"'{text}' is not a memory size above zero: write it like 1200MiB or 16GiB")
    return value


def format_size(n: int | float | None) -> str:
    """`1.2 GiB`, `300 MiB`, `-` for unknown: the units PyTorch's messages use."""
    if n is None:
        return "-"
    n = float(n)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n:.0f} B"
