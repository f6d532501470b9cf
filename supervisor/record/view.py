"""What the fold makes of a run: one `AttemptView` per attempt, and the `RunView` the live table, the report,
resume and the nodes read. Plain data with derived properties; history.py builds them from the journal.

An attempt's steps are a `StepSet` of ranges and its step log is bounded (steps.py): what a view holds grows with
the attempts, not with the steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from oomladder.classify import Failure
from oomladder.plan import Facts, Plan
from oomladder.record.records import (
    CheckpointRecord,
    DecisionRecord,
    InPlaceRecord,
    LoadRequest,
    ModelData,
    RunEnd,
    WarningRecord,
)
from oomladder.record.steps import StepLog, StepSet
from oomladder.status import AttemptOutcome, RunStatus


class Ahead:
    """What split ahead did in an attempt (worker/recovery/ahead.py): the steps it ran split, the widest split, and each
    step's predicted peak against its measured one (the first PREDICTIONS of them)."""

    PREDICTIONS = 10_000

    def __init__(self) -> None:
        self.steps_split, self.widest = 0, 1
        self.errors: list[float] = []

    def add(self, split: int, predicted: int | None, measured: int | None) -> None:
        if split > 1:
            self.steps_split += 1
            self.widest = max(self.widest, split)
        if predicted and measured and len(self.errors) < self.PREDICTIONS:
            self.errors.append(predicted / measured - 1)


@dataclass
class AttemptView:
    number: int
    rung: str | None
    reason: str
    overrides: Plan
    plan: Plan                       # the program's own settings with this attempt's overrides, then its split
    started: float
    ended: float | None = None
    status: AttemptOutcome = AttemptOutcome.RUNNING
    failure: Failure | None = None
    step: int | None = None
    max_steps: int | None = None
    loss: float | None = None
    learning_rate: float | None = None
    phase: str | None = None
    peak: int | None = None
    peak_measure: str | None = None
    exit_code: int | None = None
    command: list[str] = field(default_factory=list)
    resumed_from: int | None = None  # the step whose end this attempt continued from
    step_peak: int | None = None     # the peak at the end of its last step (not of its failure)
    step_batch: list[int] | None = None  # the largest (micro-batch, sequence length) its steps ran
    failed_batch: list[int] | None = None  # the (micro-batch, sequence length) of the step that failed
    executed: StepSet = field(default_factory=StepSet)  # the optimizer steps its workers reported running
    began_at: int | None = None      # the step its workers began training after, as they reported it
    resume_failed: str | None = None  # why its worker could not use the checkpoint it was given
    ran_again: StepSet = field(default_factory=StepSet)  # steps it ran that an earlier attempt had run
    rolled_back: bool = False         # its rung broke the program: its plan was abandoned (run/decide.py)
    adapter: bool = False             # oomladder's adapter loaded in one of its worker's processes
    # For the report's charts: when the workers began training (after start-up and any resume), and when
    # each step they executed was journaled, with the highest peak any rank reported at its end (bounded).
    training_began: float | None = None
    step_log: StepLog = field(default_factory=StepLog)
    # OOMs its worker met without a relaunch (worker/recovery/in_place.py), as journaled (the first IN_PLACE_KEPT),
    # and the split it went on with: its plan is the plan that split equals, which a later relaunch starts from.
    in_place: list[InPlaceRecord] = field(default_factory=list)
    split: int = 1
    checkpointed: bool = False        # its worker turned gradient checkpointing on in place
    ahead: Ahead = field(default_factory=lambda: Ahead())  # split ahead: its steps sized before they ran
    launched: Plan = field(default_factory=Plan)  # the plan it was launched with, before any split

    def in_place_plan(self, split: int, checkpointing: bool) -> Plan:
        """The plan its launched plan becomes with a split and checkpointing turned on in place."""
        plan = self.launched.split(split)
        return plan.replace(gradient_checkpointing=True) if checkpointing else plan

    @property
    def step_times(self) -> dict[int, float]:
        return self.step_log.times

    @property
    def step_peaks(self) -> dict[int, int]:
        return self.step_log.peaks

    @property
    def recovered_in_place(self) -> list[InPlaceRecord]:
        return [r for r in self.in_place if r.recovered]

    @property
    def reports_steps(self) -> bool:
        """Its workers report each step they execute (the adapter does, for the frameworks it knows)."""
        return self.began_at is not None or bool(self.executed)

    @property
    def steps(self) -> StepSet:
        """The optimizer steps this attempt ran: as its workers reported them, or, in a journal from before
        they did, from where it was asked to resume up to its last step."""
        if self.reports_steps:
            return self.executed
        first = (self.resumed_from or 0) + 1
        last = self.failure.step if self.failure is not None and self.failure.step is not None else self.step
        return StepSet.of_ranges([(first, last)]) if last is not None else StepSet()

    @property
    def steps_run(self) -> tuple[int, int] | None:
        """(first, last) optimizer step this attempt completed, or None if it completed none."""
        first, last = self.steps.first, self.steps.last
        return (first, last) if first is not None and last is not None else None

    @property
    def resumed(self) -> bool:
        """It continued from a checkpoint: as its workers' first step proves, where they report it."""
        return self.began_at > 0 if self.began_at is not None else self.resumed_from is not None

    @property
    def resume_missed(self) -> str | None:
        """Why this attempt did not continue where the supervisor asked it to, or None."""
        if self.resumed_from is None:
            return None
        if self.resume_failed:
            return self.resume_failed
        if self.began_at is not None and self.began_at != self.resumed_from:
            return f"asked to resume from the end of step {self.resumed_from}, it began at step {self.began_at}"
        return None

    def duration(self, now: float | None = None) -> float | None:
        end = self.ended if self.ended is not None else now
        return None if end is None else max(0.0, end - self.started)


@dataclass
class RunView:
    run: dict[str, Any]
    attempts: list[AttemptView]
    decisions: list[DecisionRecord]
    checkpoints: list[CheckpointRecord]
    program_plan: Plan               # what the wrapped program does on its own, as observed
    facts: Facts
    ended: RunEnd | None
    model: ModelData | None = None        # the worker's model shape and what trains (worker/protocol/probe.py)
    load: LoadRequest | None = None    # the last checkpoint load a worker asked for (worker/transformers/loading.py)
    warnings: list[WarningRecord] = field(default_factory=list)  # what a person should know, as journaled
    malformed: int = 0                    # journal records that could not be folded (cut off, edited)
    skipped_lines: list[int] = field(default_factory=list)  # journal lines that were not records at all
    damaged: list[dict[str, Any]] = field(default_factory=list)  # the first malformed records: {line, why}
    undone: frozenset[int] = frozenset()  # attempts abandoned by `without`, before a decision journals it

    def without(self, attempt: int) -> RunView:
        """The view as it was before `attempt`, the last, whose plan is abandoned (a rung broke the program,
        run/decide.py): its plan and the rung uses that led to it are undone."""
        assert self.attempts and self.attempts[-1].number == attempt, "only the last attempt is undone"
        return replace(self, attempts=self.attempts[:-1], undone=self.undone | {attempt})

    @property
    def rolled_back(self) -> set[int]:
        """Attempts whose plan was abandoned because a rung broke the program (decide.py)."""
        return {d.rolled_back for d in self.decisions if d.rolled_back is not None} | self.undone

    @property
    def incompatible(self) -> dict[int, str]:
        """Rungs (by index) that broke this program, with the error they caused: never tried again."""
        return {index: why for d in self.decisions for _name, index, why in d.incompatible}

    @property
    def rung_uses(self) -> dict[int, int]:
        uses: dict[int, int] = {}
        rolled_back = self.rolled_back
        for d in self.decisions:
            if d.attempt + 1 in rolled_back:
                continue  # its plan was abandoned: the rungs it used were not used after all
            for index in d.rungs_used:  # a decision that stacked several rungs lists each one it used
                uses[index] = uses.get(index, 0) + 1
        return uses

    @property
    def final_plan(self) -> Plan:
        return self.attempts[-1].plan if self.attempts else self.program_plan

    @property
    def steps_reported(self) -> bool:
        """Some attempt reported its steps; otherwise (a program the adapter does not reach) oomladder cannot
        tell whether a step ran twice."""
        return any(a.reports_steps or a.step is not None for a in self.attempts)

    @property
    def steps_exact(self) -> bool:
        """Every attempt's steps are kept one by one (not merged: step numbers too sparse to keep, steps.py)."""
        return all(a.steps.exact for a in self.attempts)

    @property
    def repeated_steps(self) -> StepSet:
        """Steps more than one attempt ran."""
        seen, repeated = StepSet(), StepSet()
        for a in self.attempts:
            steps = a.steps
            repeated.update(seen.intersection(steps))
            seen.update(steps)
        return repeated

    @property
    def missing_steps(self) -> StepSet:
        """Steps up to the last one reached that no attempt ran."""
        seen = StepSet()
        for a in self.attempts:
            seen.update(a.steps)
        return seen.gaps(1)

    @property
    def status(self) -> RunStatus:
        if self.ended:
            return self.ended.status
        return RunStatus.RUNNING if self.attempts else RunStatus.NOT_STARTED
