"""The statuses and outcomes that cross layers: how a run ended, how an attempt ended, what an in-place recovery did.

Each is a `str` enum, so the journal's JSON stays the bare text it always held (`"finished"`), while every reader
spells a status one way and a typo is an AttributeError, not a branch that never runs. Like PyTorch elastic's
`WorkerState`, one enum per thing that has a state; it imports nothing of oomladder's, so every layer may use it.
"""

from __future__ import annotations

import enum


class TextEnum(str, enum.Enum):
    """A `str` enum that reads as its value in `str()`, f-strings and `%s`, as 3.11's `enum.StrEnum` does
    (Python 3.10, which oomladder supports, has none; `json.dumps` gives the value either way)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class RunStatus(TextEnum):
    """Where a run stands: the `status` of its `run_ended` record and of the report, or not ended yet."""

    FINISHED = "finished"
    LADDER_EXHAUSTED = "ladder_exhausted"
    BUDGET_EXHAUSTED = "budget_exhausted"
    NOT_MEMORY = "not_memory"
    HANG = "hang"                      # the worker hung on the same plan more often than it is retried
    TRANSIENT = "transient"            # the infrastructure kept failing on the same plan after the retries
    INTERRUPTED = "interrupted"
    LAUNCH_FAILED = "launch_failed"
    NODE_LOST = "node_lost"
    NODES_DISAGREE = "nodes_disagree"
    DISK_FULL = "disk_full"            # the run directory's disk filled (exit 74)
    INTERNAL_ERROR = "internal_error"  # oomladder itself failed; the journal keeps the error
    # Not an end: what a view of a journal without run_ended says.
    RUNNING = "running"
    NOT_STARTED = "not started"

    @property
    def ended(self) -> bool:
        """A status a `run_ended` record may hold."""
        return self not in (RunStatus.RUNNING, RunStatus.NOT_STARTED)


class AttemptOutcome(TextEnum):
    """How an attempt ended: the `outcome` of its `attempt_ended` (and `node_ended`) record, or running still."""

    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # stopped by oomladder or from outside: not the plan's fault
    RUNNING = "running"          # no attempt_ended yet

    @property
    def ended(self) -> bool:
        return self is not AttemptOutcome.RUNNING


class InPlaceOutcome(TextEnum):
    """What the worker did with an out-of-memory error it met without a relaunch (worker/recovery/in_place.py)."""

    SPLIT = "split"        # recovered: the step ran again in chunks of its rows
    DECLINED = "declined"  # the program or the step cannot be split: the attempt fails as before
    FLOOR = "floor"        # already split down to one row: nothing finer to try
    FAILED = "failed"      # the recovery itself failed (the split step, or turning checkpointing on)

