"""The typed values that cross from watching an attempt to deciding what comes next.

Like PyTorch elastic's `RunResult` and `WorkerState`: the watcher says how an attempt ended, the
pure decision (decide.py) reads that and says what the run does next, and the loop acts on it.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass

from oomladder.classify import Failure
from oomladder.ladder import Decision
from oomladder.nodes.world import PeerStop
from oomladder.plan import Plan
from oomladder.run.budget import Budget
from oomladder.status import RunStatus


class Stop(enum.Enum):
    """Why the supervisor itself stopped a worker group that had not ended on its own."""

    SIGNAL = "signal"    # oomladder got SIGINT or SIGTERM
    BUDGET = "budget"    # --max-wall-time ran out during the attempt
    PEER = "peer"        # several nodes: another node's group ended


@dataclass(frozen=True)
class StopReason:
    kind: Stop
    signum: int | None = None                 # Stop.SIGNAL
    budget: Budget | None = None              # Stop.BUDGET
    peer: PeerStop | None = None              # Stop.PEER: the node, why, and the status and exit code it chose

    def __post_init__(self) -> None:
        given = {Stop.SIGNAL: self.signum, Stop.BUDGET: self.budget, Stop.PEER: self.peer}[self.kind]
        if given is None:
            raise ValueError(f"a stop of kind {self.kind.value} says which {self.kind.value}")

    @property
    def detail(self) -> str:
        """What the `interrupt` record says besides the kind."""
        if self.kind is Stop.BUDGET and self.budget is not None:
            return self.budget.flag
        if self.kind is Stop.SIGNAL:
            return str(self.signum)
        peer = self.peer
        return str(peer if peer is None else {"node": peer.node, "why": peer.why, "status": peer.status.value,
                                              "exit_code": peer.exit_code})

    @property
    def signal_to_send(self) -> int:
        """What the worker's leader gets: SIGINT as oomladder got it, otherwise SIGTERM (it saves its step)."""
        return signal.SIGINT if self.kind is Stop.SIGNAL and self.signum == signal.SIGINT else signal.SIGTERM


@dataclass(frozen=True)
class AttemptResult:
    """How one attempt ended, as the watcher journaled it."""

    number: int
    exit_code: int | None
    failure: Failure | None        # None: the worker finished
    stop: StopReason | None        # the supervisor stopped it (or the world did, on several nodes)
    duration: float


@dataclass(frozen=True)
class NextAttempt:
    """What the next attempt runs with: the plan's overrides, and the rung and reason that chose them."""

    overrides: Plan
    rung: str | None
    reason: str


@dataclass(frozen=True)
class Retry:
    """The same plan again, after `delay` seconds: the failure was not the plan's."""

    plan: Plan
    reason: str
    delay: float


@dataclass(frozen=True)
class Rollback:
    """A rung broke a program that worked: attempt `attempt`'s plan is abandoned, and these rungs, by
    (name, index, the error they caused), are not tried again."""

    attempt: int
    incompatible: tuple[tuple[str, int, str], ...]

    @property
    def what_broke(self) -> str:
        """The rungs undone and the error each caused, in words."""
        return "; ".join(f"{name} broke the program ({why})" for name, _, why in self.incompatible)


@dataclass(frozen=True)
class Climb:
    """The ladder's next plan (the decision's, which is never None here)."""

    plan: Plan
    decision: Decision
    rollback: Rollback | None = None


@dataclass(frozen=True)
class End:
    """The run ends with this status and exit code; `decision` is the ladder's verdict when it had none left."""

    status: RunStatus
    exit_code: int
    reason: str
    decision: Decision | None = None
    rollback: Rollback | None = None


Next = Retry | Climb | End
