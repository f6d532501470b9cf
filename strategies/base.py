"""What a strategy is: a small unit that turns one plan into a cheaper one, or says why it cannot.

Like Composer's algorithms: `apply` is a pure function of (plan, facts, failure); the class only
carries its validated parameters. A strategy never touches processes, files or the journal.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from oomladder.classify import Failure
from oomladder.cost import Cost
from oomladder.plan import Facts, Plan


@dataclass(frozen=True)
class Applied:
    plan: Plan
    reason: str          # one line a person reads in the morning


@dataclass(frozen=True)
class Skipped:
    reason: str


Outcome = Applied | Skipped


class Strategy(ABC):
    """Subclass, set `name` and `memory`, implement `apply`; register with `@register`."""

    name: ClassVar[str]
    memory: ClassVar[frozenset[str]] = frozenset({"device"})  # which failures it can help with
    phases: ClassVar[frozenset[str]] = frozenset({"train"})   # "eval" OOMs only go to eval rungs
    repeatable: ClassVar[bool] = False  # a rung that can usefully apply again to its own output
    fixes_fragmentation: ClassVar[bool] = False  # tried first when the OOM shows memory reserved in pieces
    # It makes the program run other code (another dtype, quantized layers, recomputation): when a stacked
    # decision breaks the program, these are its suspects. A smaller micro-batch runs the same code.
    changes_code: ClassVar[bool] = True
    params: ClassVar[dict[str, type]] = {}  # accepted YAML parameters and their types
    # Its expected effect on speed (and numerics), shown by `oomladder strategies`, `oomladder plan` and the report.
    cost: ClassVar[Cost] = Cost(None, "not stated")
    # The estimate's term it acts on (memory/estimate.py): "optimizer states", "logits", "activations", ...
    acts_on: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        from oomladder.errors import StrategyError
        for key, value in params.items():
            expected = self.params.get(key)
            if expected is None:
                accepted = ", ".join(self.params) or "none"
                raise StrategyError(f"strategy '{self.name}' has no parameter '{key}' (it accepts: {accepted})")
            if not isinstance(value, expected) or isinstance(value, bool) and expected is not bool:
                raise StrategyError(f"strategy '{self.name}': parameter '{key}' must be {expected.__name__}, "
                                    f"not {value!r}")
        self.options = params
        self.validate()

    def validate(self) -> None:
        """Check parameter values; raise StrategyError with what is accepted."""

    def matches(self, failure: Failure) -> bool:
        return failure.memory in self.memory and (failure.phase or "train") in self.phases

    @abstractmethod
    def apply(self, plan: Plan, facts: Facts, failure: Failure) -> Outcome:
        """The cheaper plan and why, or why this rung does not apply to `plan`."""

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"
