"""Budgets as tenacity stop policies: small objects that read one state and compose with `|`.

The runner asks `exhausted(...)` between attempts and while one runs; the policy that fired is
named in the journal and the report, so a person knows which limit ended the night.
"""

from __future__ import annotations

import enum
import functools
import operator
from dataclasses import dataclass
from typing import cast

from tenacity import stop_after_attempt, stop_after_delay
from tenacity import RetryCallState
from tenacity.stop import stop_base


@dataclass(frozen=True)
class BudgetState:
    """The two fields tenacity's stop policies read (they are typed for its `RetryCallState`, of which they read
    nothing else: `spent` hands this over in its place)."""

    attempt_number: int           # attempts made by this invocation
    seconds_since_start: float    # wall time of this invocation


class BudgetKind(enum.Enum):
    """What a budget limits; its value is the flag that sets it, as the journal and the messages name it."""

    ATTEMPTS = "--max-attempts"
    WALL_TIME = "--max-wall-time"


@dataclass(frozen=True)
class Budget:
    kind: BudgetKind
    policy: stop_base
    text: str

    @property
    def flag(self) -> str:
        return self.kind.value


def budgets(max_attempts: int | None, max_wall_time: float | None) -> list[Budget]:
    out = []
    if max_attempts:
        out.append(Budget(BudgetKind.ATTEMPTS, stop_after_attempt(max_attempts), f"{max_attempts} attempts"))
    if max_wall_time:
        out.append(Budget(BudgetKind.WALL_TIME, stop_after_delay(max_wall_time), f"{max_wall_time:g} s of wall time"))
    return out


def exhausted(all_budgets: list[Budget], state: BudgetState) -> Budget | None:
    """The first budget that is spent, or None."""
    if not all_budgets or not spent(functools.reduce(operator.or_, [b.policy for b in all_budgets]), state):
        return None
    return next(b for b in all_budgets if spent(b.policy, state))


def spent(policy: stop_base, state: BudgetState) -> bool:
    return policy(cast(RetryCallState, state))
