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
_SIZE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
SMALLEST_MODEL = 64 * 2**20  # a cap under this holds no model anyone trains: almost surely a unit left out


def parse_size(text: str, flag: str | None = None) -> int:
    """Bytes in `text`; raises UsageError with an example of what is accepted. With `flag` (the option it came
    from) a bare number is refused: `--memory-cap 1200` is far more likely 1200 MiB forgotten than 1200 bytes."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise UsageError(f"{_given(text, flag)} is not a memory size: write it like 1200MiB, 16GiB or 1.5G")
    if flag and not unit:
        raise UsageError(f"{_given(text, flag)} has no unit: write {match.group(1)}MiB or {match.group(1)}GiB "
                         f"({match.group(1)}B if you mean bytes)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UsageError(f"{_given(text, flag)} is not a memory size above zero: write it like 1200MiB or 16GiB")
    return value


def _given(text: str, flag: str | None) -> str:
    return f"{flag} '{text}'" if flag else f"'{text}'"


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


def format_steps(steps) -> str:
    """`1–2, 5`: optimizer steps as runs of consecutive numbers. `steps` is a step set (anything with
    `ranges()`), ranges `[first, last]`, or step numbers; a range is never expanded."""
    if hasattr(steps, "ranges"):
        pairs = list(steps.ranges())
    else:
        pairs = sorted((s, s) if isinstance(s, int) else (s[0], s[1]) for s in steps)
    runs: list[list[int]] = []
    for first, last in pairs:
        if runs and first <= runs[-1][1] + 1:
            runs[-1][1] = max(runs[-1][1], last)
        else:
            runs.append([first, last])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in runs)
