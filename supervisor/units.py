"""Units people write: memory sizes (`1200MiB`, `16GiB`, `1.5G`) and durations (`90s`, `30m`, `8h`);
and how oomladder writes sizes and step ranges back.

Decimal (`GB`) and binary (`GiB`) suffixes mean what they say; a bare `G`/`M`/`K` is binary,
as in `nvidia-smi` and PyTorch's own messages, which is what people mean by "a 16G card".
"""

from __future__ import annotations

import re

from oomladder.errors import UsageError

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


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$", re.I)
_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `30m`, `8h`, `1.5h`; raises UsageError with an example."""
    match = _DURATION.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"'{text}' is not a duration: write it like 90s, 30m or 8h")
    unit = match.group(2).lower() if match.group(2) else None
    return float(match.group(1)) * _SECONDS[unit]


def format_steps(steps: list[int]) -> str:
    """`1–2, 5`: optimizer steps as runs of consecutive numbers."""
    runs: list[list[int]] = []
    for step in sorted(set(steps)):
        if runs and step == runs[-1][1] + 1:
            runs[-1][1] = step
        else:
            runs.append([step, step])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in runs)
