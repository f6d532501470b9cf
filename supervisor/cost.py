"""What a rung costs besides memory: its expected effect on the speed of a step, as data.

Each strategy states its cost (`Strategy.cost`); the ladder journals it with its rungs, so the
report can say what the final plan is expected to cost against the program's own settings without
importing a strategy. The numbers are rules of thumb for a busy GPU, not measurements of this run:
the report says "expected", and a rung whose cost depends on the machine (offloading is bound by
the host link) says so instead of giving a number. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from oomladder.plan import Plan


@dataclass(frozen=True)
class Cost:
    """A rung's expected cost. `speed` is the extra time per optimizer step as a share of the step
    (0.33: a third more), or None when it depends on the machine; `says` is the same in words."""

    speed: float | None
    says: str
    field: str | None = None        # the plan setting whose change shows this rung in a plan
    numerics: str = ""              # what changes in the numbers, if anything

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Cost | None:
        if not data or "says" not in data:
            return None
        return cls(data.get("speed"), str(data["says"]), data.get("field"), data.get("numerics", ""))

    def short(self) -> str:
        """`+33 %`, `~0 %`, or `depends` (for a table column)."""
        return percent(self.speed)


@dataclass(frozen=True)
class Slowdown:
    """The expected cost of a plan against another: `share` over the costs with a number, `depends` the
    rungs whose cost has none, `parts` one line each."""

    share: float
    depends: tuple[str, ...]
    parts: tuple[str, ...]

    def text(self) -> str:
        if not self.parts:
            return "about the same speed as the program's own settings"
        base = f"about {percent(self.share)} time per step against the program's own settings"
        extra = f", plus {', '.join(self.depends)} (bound by the host link, not estimated)" if self.depends else ""
        return f"{base}{extra}: {'; '.join(self.parts)}"

    def to_dict(self) -> dict[str, Any]:
        return {"share": round(self.share, 4), "depends_on": list(self.depends), "parts": list(self.parts),
                "text": self.text()}


def slowdown(before: Plan, after: Plan, costs: Iterable[tuple[str, Cost]]) -> Slowdown:
    """What `after` is expected to cost against `before`, from each rung's cost and the setting it marks.
    A smaller micro-batch costs once per halving. Costs compound: 1.33 x 1.10, not 1.43."""
    total, depends, parts, seen = 1.0, [], [], set()
    for name, cost in costs:
        if cost.field is None or cost.field in seen:
            continue
        old, new = getattr(before, cost.field, None), getattr(after, cost.field, None)
        if old == new or new is None:
            continue
        seen.add(cost.field)
        times = 1
        if isinstance(old, int) and isinstance(new, int) and not isinstance(old, bool) and 0 < new < old:
            times = max(1, round(math.log2(old / new)))
        label = name if times == 1 else f"{name} x{times}"
        if cost.speed is None:
            depends.append(label)
            parts.append(f"{label}: {cost.says}")
            continue
        total *= (1 + cost.speed) ** times
        parts.append(f"{label}: {cost.says}")
    return Slowdown(total - 1, tuple(depends), tuple(parts))


def percent(share: float | None) -> str:
    if share is None:
        return "depends"
    if abs(share) < 0.005:
        return "~0 %"
    return f"{'+' if share > 0 else '−'}{abs(share) * 100:.0f} %"


def slowdown_cell(cost: Mapping[str, Any]) -> str:
    """A journaled or reported slowdown (`Slowdown.to_dict`) for a table cell: `+33 %`, or `+33 %, plus
    activation_offloading (depends on the host link)`."""
    cell = percent(cost["share"])
    if cost.get("depends_on"):
        cell += f", plus {', '.join(cost['depends_on'])} (depends on the host link)"
    return cell
