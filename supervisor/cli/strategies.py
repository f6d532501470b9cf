"""`oomladder strategies`: every strategy a ladder file can name, in the order the default ladder tries them,
each described in whole sentences, with what it answers and what it costs besides memory."""

from __future__ import annotations

import sys
import textwrap

from rich.console import Console

from oomladder import strategies as registry
from oomladder.ladder import load_ladder
from oomladder.strategies.base import Strategy

PHASES = {"train": "in training", "eval": "in evaluation", "load": "while the model loads"}


def list_strategies(console: Console) -> int:
    console.print(listing(console.width), markup=False, highlight=False, soft_wrap=True)
    return 0


def listing(width: int) -> str:
    """The text, wrapped at `width` between words: nothing is cut."""
    positions: dict[str, list[int]] = {}
    for rung in load_ladder(None).rungs:
        positions.setdefault(rung.name, []).append(rung.index + 1)
    names = list(positions) + [n for n in registry.available() if n not in positions]  # third parties' last
    out = [textwrap.fill("The strategies, in the order the default ladder tries them after an out-of-memory "
                         "error (configs/default.yaml). A ladder file (--ladder) names the ones it wants, in its "
                         "own order.", width, break_on_hyphens=False)]
    for name in names:
        cls = registry.get(name)
        where = positions.get(name)
        place = (f"rung {where[0]}" if len(where) == 1 else "rungs " + " and ".join(map(str, where))) if where \
            else "not in the default ladder"
        params = f"; parameters: {', '.join(cls.params)}" if cls.params else ""
        out += ["", f"{name}  ({place}{params})"]
        out += [textwrap.fill(text, width, initial_indent="    ", subsequent_indent="    ", break_long_words=False,
                              break_on_hyphens=False) for text in _paragraph(cls)]
    return "\n".join(out)


def _paragraph(cls: type[Strategy]) -> list[str]:
    phases = " and ".join(PHASES.get(p, p) for p in sorted(cls.phases, key=list(PHASES).index))
    numerics = f" Numerics: {_ended(cls.cost.numerics)}" if cls.cost.numerics else ""
    return [_ended(description(cls)),
            f"For {' and '.join(sorted(cls.memory))} memory, {phases}. Cost: {_ended(cls.cost.says)}{numerics}"]


def description(cls: type[Strategy]) -> str:
    """The strategy's own docstring's first paragraph (or its module's), whole: never cut mid-sentence."""
    own = cls.__doc__ if cls.__doc__ and cls.__doc__ is not Strategy.__doc__ else None
    text = (own or sys.modules[cls.__module__].__doc__ or "").strip()
    return " ".join(text.split("\n\n")[0].split())


def _ended(text: str) -> str:
    text = text.strip()
    return text + ("" if text.endswith((".", "!", "?")) else ".")
