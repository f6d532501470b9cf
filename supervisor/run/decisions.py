"""A decision of the ladder as the journal keeps it: what the run loop (loop.py) and a notebook kernel's runner
(oomladder/notebook) journal when `decide` climbs, and, with --verbose, the arithmetic behind it on the console."""

from __future__ import annotations

from oomladder.ladder import Decision
from oomladder.plan import describe_changes
from oomladder.record import schema
from oomladder.record.journal import Journal
from oomladder.run.decide import arithmetic
from oomladder.run.outcomes import Rollback
from oomladder.views.display import Unbreakable


def journal_decision(journal: Journal, number: int, decision: Decision, rollback: Rollback | None = None,
                     display: Unbreakable | None = None, memory_cap: int | None = None) -> str | None:
    """The ladder's decision as the journal keeps it; returns what it changes (from the plan it undoes to, when a
    rung broke the program). The runner's, and a notebook kernel's (oomladder/notebook)."""
    attempts = journal.view().attempts
    current = (attempts[-2] if rollback is not None else attempts[-1]).plan
    changes = describe_changes(current, decision.plan) if decision.plan else None
    journal.append(schema.DECISION, attempt=number, rung=decision.rung, rung_index=decision.rung_index,
                   rung_indices=list(decision.rung_indices), reason=decision.reason,
                   plan=decision.plan.to_dict() if decision.plan else None, changes=changes,
                   skipped=[list(s) for s in decision.skipped], estimate=decision.estimate,
                   **({"rolled_back": rollback.attempt, "incompatible": [list(r) for r in rollback.incompatible]}
                      if rollback is not None else {}))
    if display is not None:  # --verbose: the arithmetic behind it
        display.explain(lambda: arithmetic(journal.view(), decision, memory_cap))
    return changes
