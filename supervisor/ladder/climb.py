"""The climb: the rungs successive out-of-memory errors would take from a plan, each building on
the plan before it. Written once, for the loop (several rungs at once, memory/foresight.py),
`oomladder plan` (every rung, memory/fits.py) and the tests. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from oomladder.classify import Failure
from oomladder.ladder.rungs import Decision, Ladder, next_plan
from oomladder.plan import Facts, Plan

# Why to pass a rung over (it is then left out of the rest of the climb), or None to take it: from the plan
# before the rung and the plan it makes.
PassOver = Callable[[Plan, Plan], "str | None"]


@dataclass(frozen=True)
class Step:
    before: Plan                 # the plan the rung was applied to
    decision: Decision           # exhausted: the climb ends here
    passed_over: str | None = None


def climb(ladder: Ladder, plan: Plan, facts: Facts, failure: Failure, uses: Mapping[int, int],
          pass_over: PassOver = lambda before, after: None, exclude: frozenset[int] = frozenset()) -> Iterator[Step]:
    """Each rung in turn, as `next_plan` gives it, until the ladder has none left (the last step is
    the exhausted decision). `uses` counts the rungs already used in this run; rungs in `exclude` are
    left out (ones that broke this program)."""
    used, excluded = dict(uses), set(exclude)
    while True:
        decision = next_plan(ladder, plan, facts, failure, used, frozenset(excluded))
        if decision.plan is None or decision.rung_index is None:  # exhausted
            yield Step(plan, decision)
            return
        why = pass_over(plan, decision.plan)
        yield Step(plan, decision, why)
        if why is not None:
            excluded.add(decision.rung_index)
            continue
        used[decision.rung_index] = used.get(decision.rung_index, 0) + 1
        plan = decision.plan
