"""Fold the journal into a view of the run: what the live table, the report and resume show.

Pure: records in, `RunView` out. Nothing here reads files or clocks, except `now` for the
duration of an attempt still running. What it keeps grows with the attempts, not with the steps: an
attempt's steps are ranges (steps.py), its step log is bounded, and a record whose fields are not what its
type says (checks.py) is counted as damaged and left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from oomladder.classify import Failure
from oomladder.plan import Facts, Plan
from oomladder.record import schema
from oomladder.record.checks import damage
from oomladder.record.records import (
    CheckpointRecord,
    DecisionRecord,
    InPlaceRecord,
    LoadRequest,
    ModelData,
    RunEnd,
    WarningRecord,
)
from oomladder.record.steps import StepSet
from oomladder.record.view import AttemptView, RunView
from oomladder.status import AttemptOutcome

__all__ = ["AttemptView", "Folder", "RunView", "fold"]  # the views are read from here too

IN_PLACE_KEPT = 100  # an attempt's in-place records the view keeps (a flood of them is counted, not kept)
DAMAGED_KEPT = 100   # damaged records named by line and why (the rest are counted)


def fold(records: Iterable[dict[str, Any]]) -> RunView:
    """The view of a run from its records (pure)."""
    folder = Folder()
    for r in records:
        folder.add(r)
    return folder.view()


class Folder:
    """The fold, one record at a time: the live table and the loop read the view of a journal of hundreds of
    thousands of steps without keeping its progress records or folding them again at each look."""

    def __init__(self) -> None:
        self.run: dict[str, Any] = {}
        self.attempts: dict[int, AttemptView] = {}
        self.decisions: list[DecisionRecord] = []
        self.checkpoints: list[CheckpointRecord] = []
        self.warnings: list[WarningRecord] = []
        self.observed = Plan()
        self.facts: dict[str, Any] = {}
        self.model: ModelData | None = None
        self.load: LoadRequest | None = None
        self.ended: RunEnd | None = None
        self.malformed = 0                   # records without the fields their type needs
        self.damaged: list[dict[str, Any]] = []  # the first DAMAGED_KEPT of them: {line, why}
        self._before: tuple[int, StepSet] | None = None  # (attempt, the steps of the attempts numbered below it)

    def add(self, r: dict[str, Any], line: int | None = None) -> None:
        """Fold one record (`line`: its line in the journal, to name it if it is damaged).

        A record is checked whole before it is folded (checks.py), so the fold itself catches nothing: an
        exception in it is a bug in oomladder, raised as one, never a record counted as damaged."""
        why = damage(r)
        if why is None:
            self._add(r)
            return
        self.malformed += 1  # a record cut short or edited by hand: the rest of the run still folds
        if len(self.damaged) < DAMAGED_KEPT:
            self.damaged.append({"line": line, "why": why})

    def _add(self, r: dict[str, Any]) -> None:
        fold = self._FOLDS.get(r.get("type"))
        if fold is not None:
            fold(self, r)

    def _run_started(self, r: dict[str, Any]) -> None:
        self.run, self.ended = r, None  # a resumed run starts again

    def _attempt_started(self, r: dict[str, Any]) -> None:
        overrides = Plan.from_dict(r.get("plan"))
        launched = self.observed.merged(overrides)
        self.attempts[r["attempt"]] = AttemptView(
            number=r["attempt"], rung=r.get("rung"), reason=r.get("reason") or "", overrides=overrides,
            plan=launched, started=r["ts"], command=r.get("command") or [],
            resumed_from=(r.get("resume_from") or {}).get("step"), launched=launched)

    def _observed(self, r: dict[str, Any]) -> None:
        # Later observations fill fields earlier attempts died before reaching.
        self.observed = self.observed.merged(Plan.from_dict(r.get("plan")))
        self.facts.update({k: v for k, v in (r.get("facts") or {}).items() if v is not None})
        if self.model is None and r.get("model"):  # the first report: later ones see the model as loaded
            self.model = ModelData.of(r["model"])
        self.load = LoadRequest.of(r["load"]) if r.get("load") else self.load
        for a in self.attempts.values():
            a.launched = self.observed.merged(a.overrides)
            a.plan = a.in_place_plan(a.split, a.checkpointed)

    def _progress_record(self, r: dict[str, Any]) -> None:
        if r.get("attempt") in self.attempts:
            self._progress(self.attempts[r["attempt"]], r)

    def _in_place(self, r: dict[str, Any]) -> None:
        if r.get("attempt") not in self.attempts:
            return
        a, record = self.attempts[r["attempt"]], InPlaceRecord.of(r)
        if len(a.in_place) < IN_PLACE_KEPT:
            a.in_place.append(record)
        if record.recovered:
            if not record.per_step:  # split ahead's splits are for their step alone
                a.split = max(a.split, record.split)
            else:
                a.ahead.widest = max(a.ahead.widest, record.split)
            a.checkpointed = a.checkpointed or record.checkpointing
            a.plan = a.in_place_plan(a.split, a.checkpointed)

    def _attempt_ended(self, r: dict[str, Any]) -> None:
        if r.get("attempt") not in self.attempts:
            return
        a = self.attempts[r["attempt"]]
        a.ended, a.status, a.exit_code = r["ts"], AttemptOutcome(r["outcome"]), r.get("exit_code")
        a.failure = Failure.from_dict(r["failure"]) if r.get("failure") else None
        for key in ("step", "max_steps", "peak", "peak_measure"):
            if r.get(key) is not None:
                setattr(a, key, r[key])
        a.failed_batch = r.get("batch_shape")

    def _decision(self, r: dict[str, Any]) -> None:
        decision = DecisionRecord.of(r)
        self.decisions.append(decision)
        if decision.rolled_back in self.attempts:
            self.attempts[decision.rolled_back].rolled_back = True

    def _run_ended(self, r: dict[str, Any]) -> None:
        self.ended = RunEnd.of(r)

    # Each record type and how it folds; a type this oomladder does not know (a newer one's) is passed over.
    _FOLDS: dict[Any, Callable[[Folder, dict[str, Any]], None]] = {
        schema.RUN_STARTED: _run_started,
        schema.ATTEMPT_STARTED: _attempt_started,
        schema.OBSERVED: _observed,
        schema.PROGRESS: _progress_record,
        schema.IN_PLACE: _in_place,
        schema.ATTEMPT_ENDED: _attempt_ended,
        schema.DECISION: _decision,
        schema.CHECKPOINT: lambda self, r: self.checkpoints.append(CheckpointRecord.of(r)),
        schema.WARNING: lambda self, r: self.warnings.append(WarningRecord.of(r)),
        schema.RUN_ENDED: _run_ended,
    }

    def _progress(self, a: AttemptView, r: dict[str, Any]) -> None:
        if r.get("executed"):
            if r.get("steps"):  # ranges of steps: a flood the watcher journaled at a bounded rate
                self._ran(a, StepSet.of_ranges(r["steps"]).difference(a.executed), r.get("ts"))
            elif r.get("step") is not None and r["step"] not in a.executed:
                self._ran(a, StepSet([r["step"]]), r.get("ts"))
            if r.get("step") is not None and r.get("peak") is not None:  # each rank reports the step: the highest
                a.step_log.add(r["step"], r.get("ts"), r["peak"])
            if r.get("split_ahead") is not None or r.get("predicted") is not None:
                a.ahead.add(r.get("split_ahead") or 1, r.get("predicted"), r.get("measured"))
        if r.get("began_at") is not None and a.began_at is None:
            a.began_at, a.training_began = r["began_at"], r.get("ts")
        if r.get("resume_failed"):
            a.resume_failed = r["resume_failed"]
        if r.get("adapter"):
            a.adapter = True
        for key in ("step", "max_steps", "loss", "learning_rate", "phase", "peak_measure"):
            if r.get(key) is not None:
                setattr(a, key, r[key])
        if r.get("peak") is not None:  # the highest of any rank
            a.peak = max(a.peak or 0, r["peak"])
            if r.get("step") is not None:
                a.step_peak = max(a.step_peak or 0, r["peak"])
        if r.get("batch_shape"):
            a.step_batch = r["batch_shape"]

    def _ran(self, a: AttemptView, new: StepSet, ts: float | None) -> None:
        """Steps `a`'s workers ran for the first time in this attempt."""
        earlier = self._earlier_than(a.number)
        if earlier and (again := earlier.intersection(new)):
            a.ran_again.update(again)
        a.executed.update(new)
        for step in {new.first, new.last}:
            if step is not None:
                a.step_log.add(step, ts, None)
        if self._before is not None and a.number < self._before[0]:
            self._before = None  # an earlier attempt's steps changed: the union is taken again when next asked

    def _earlier_than(self, number: int) -> StepSet:
        """The steps the attempts numbered below `number` ran (kept while `number` is the one reporting)."""
        if self._before is None or self._before[0] != number:
            union = StepSet()
            for other in self.attempts.values():
                if other.number < number:
                    union.update(other.executed)
            self._before = (number, union)
        return self._before[1]

    def view(self) -> RunView:
        ordered = [self.attempts[n] for n in sorted(self.attempts)]
        if any(not a.reports_steps for a in ordered):
            # A journal from before steps were reported counts them from the ranges it can infer.
            seen = StepSet()
            for a in ordered:
                if not a.reports_steps:
                    a.ran_again = seen.intersection(a.steps)
                seen.update(a.steps)
        return RunView(self.run, ordered, list(self.decisions), list(self.checkpoints), self.observed,
                       Facts.from_dict(self.facts), self.ended, self.model, self.load, list(self.warnings),
                       self.malformed, damaged=list(self.damaged))

