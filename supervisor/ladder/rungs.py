"""A ladder's rungs and the pure step from (plan, failure) to the next plan.

Each failure walks the ladder from the top. A rung that already did its work skips itself
(bf16 on a bf16 plan), so walking from the top keeps the order the file gives while letting a
later failure of a different kind (evaluation, host memory) reach the rungs made for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from oomladder.classify import Failure, is_fragmented
from oomladder.plan import Facts, Plan
from oomladder.strategies.base import Applied, Strategy


@dataclass(frozen=True)
class Rung:
    index: int
    strategy: Strategy
    times: int | None          # how often this rung may apply; None is "until it skips itself"

    @property
    def name(self) -> str:
        return self.strategy.name

    def to_dict(self) -> dict[str, Any]:
        # The cost is journaled with the rung, so the report can price the final plan without the strategy.
        return {"name": self.name, "params": dict(self.strategy.options), "times": self.times,
                "cost": self.strategy.cost.to_dict()}


@dataclass(frozen=True)
class Ladder:
    rungs: tuple[Rung, ...]
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rungs": [r.to_dict() for r in self.rungs]}


@dataclass(frozen=True)
class Decision:
    plan: Plan | None                      # None: no rung left
    rung: str | None
    rung_index: int | None
    reason: str
    skipped: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    rung_indices: tuple[int, ...] = ()     # every rung a stacked decision used (memory/foresight.py)
    estimate: dict[str, Any] | None = None  # the estimator's numbers behind a stacked decision

    @property
    def exhausted(self) -> bool:
        return self.plan is None


def next_plan(ladder: Ladder, plan: Plan, facts: Facts, failure: Failure,
              uses: Mapping[int, int], exclude: frozenset[int] = frozenset()) -> Decision:
    """The first rung, from the top, that addresses `failure` and changes `plan` within the rules.

    `uses` counts how often each rung index has applied so far in this run (from the journal);
    rungs in `exclude` are passed over.
    """
    skipped: list[tuple[str, str]] = []
    rungs = list(ladder.rungs)
    if is_fragmented(failure):
        # The memory is there but in pieces: an allocator rung goes before any that changes the training.
        rungs.sort(key=lambda rung: not rung.strategy.fixes_fragmentation)
    for rung in rungs:
        if rung.index in exclude or not rung.strategy.matches(failure):
            continue
        if rung.times is not None and uses.get(rung.index, 0) >= rung.times:
            continue  # spent: not a skip worth telling, the ladder said how often
        outcome = rung.strategy.apply(plan, facts, failure)
        if isinstance(outcome, Applied):
            before, after = plan.effective_batch, outcome.plan.effective_batch
            if before is not None and after != before:
                skipped.append((rung.name, f"refused: it would change the effective batch from {before} to {after}"))
                continue
            if outcome.plan == plan:
                skipped.append((rung.name, "it changed nothing"))
                continue
            return Decision(outcome.plan, rung.name, rung.index, outcome.reason, tuple(skipped), (rung.index,))
        skipped.append((rung.name, outcome.reason))
    what = "the evaluation" if failure.phase == "eval" else f"{failure.memory} memory"
    return Decision(None, None, None, f"no rung of the ladder is left that saves {what}", tuple(skipped))
