"""Fold the journal into a view of the run: what the live table, the report and resume show.

Pure: records in, `RunView` out. Nothing here reads files or clocks, except `now` for the
duration of an attempt still running.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from oomladder.classify import Failure
from oomladder.plan import Facts, Plan
from oomladder.record import schema


@dataclass
class AttemptView:
    number: int
    rung: str | None
    reason: str
    overrides: Plan
    plan: Plan                       # the program's own settings with this attempt's overrides, then its split
    started: float
    ended: float | None = None
    status: str = "running"          # running | finished | failed | interrupted
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
    executed: set[int] = field(default_factory=set)  # the optimizer steps its workers reported running
    began_at: int | None = None      # the step its workers began training after, as they reported it
    resume_failed: str | None = None  # why its worker could not use the checkpoint it was given
    ran_again: list[int] = field(default_factory=list)  # steps it ran that an earlier attempt had run
    rolled_back: bool = False         # its rung broke the program: its plan was abandoned (run/decide.py)
    adapter: bool = False             # oomladder's adapter loaded in one of its worker's processes
    # For the report's charts: when the workers began training (after start-up and any resume), and when
    # each step they executed was journaled, with the highest peak any rank reported at its end.
    training_began: float | None = None
    step_times: dict[int, float] = field(default_factory=dict)
    step_peaks: dict[int, int] = field(default_factory=dict)
    # OOMs its worker met without a relaunch (worker/inplace.py), as journaled, and the split it went on with:
    # its plan is the plan that split equals, which a later relaunch starts from.
    in_place: list[dict[str, Any]] = field(default_factory=list)
    split: int = 1
    checkpointed: bool = False        # its worker turned gradient checkpointing on in place
    launched: Plan = field(default_factory=Plan)  # the plan it was launched with, before any split

    def in_place_plan(self, split: int, checkpointing: bool) -> Plan:
        """The plan its launched plan becomes with a split and checkpointing turned on in place."""
        plan = self.launched.split(split)
        return plan.replace(gradient_checkpointing=True) if checkpointing else plan

    @property
    def recovered_in_place(self) -> list[dict[str, Any]]:
        return [r for r in self.in_place if r.get("outcome") == "split"]

    @property
    def reports_steps(self) -> bool:
        """Its workers report each step they execute (the adapter does, for the frameworks it knows)."""
        return self.began_at is not None or bool(self.executed)

    @property
    def steps(self) -> list[int]:
        """The optimizer steps this attempt ran: as its workers reported them, or, in a journal from before
        they did, from where it was asked to resume up to its last step."""
        if self.reports_steps:
            return sorted(self.executed)
        first = (self.resumed_from or 0) + 1
        last = self.failure.step if self.failure is not None and self.failure.step is not None else self.step
        return list(range(first, last + 1)) if last is not None else []

    @property
    def steps_run(self) -> tuple[int, int] | None:
        """(first, last) optimizer step this attempt completed, or None if it completed none."""
        steps = self.steps
        return (steps[0], steps[-1]) if steps else None

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
    decisions: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]
    program_plan: Plan               # what the wrapped program does on its own, as observed
    facts: Facts
    ended: dict[str, Any] | None
    model: dict[str, Any] | None = None   # the worker's model shape and what trains (worker/probe.py)
    load: dict[str, Any] | None = None    # the last checkpoint load a worker asked for (worker/loading.py)
    warnings: list[dict[str, Any]] = field(default_factory=list)  # what a person should know, as journaled
    malformed: int = 0                    # journal records that could not be folded (cut off, edited)
    skipped_lines: list[int] = field(default_factory=list)  # journal lines that were not records at all

    @property
    def rolled_back(self) -> set[int]:
        """Attempts whose plan was abandoned because a rung broke the program (decide.py)."""
        return {d["rolled_back"] for d in self.decisions if d.get("rolled_back") is not None}

    @property
    def incompatible(self) -> dict[int, str]:
        """Rungs (by index) that broke this program, with the error they caused: never tried again."""
        return {index: why for d in self.decisions for _name, index, why in d.get("incompatible") or []}

    @property
    def rung_uses(self) -> dict[int, int]:
        uses: dict[int, int] = {}
        rolled_back = self.rolled_back
        for d in self.decisions:
            if d["attempt"] + 1 in rolled_back:
                continue  # its plan was abandoned: the rungs it used were not used after all
            # A decision that stacked several rungs lists each one it used.
            for index in d.get("rung_indices") or ([d["rung_index"]] if d.get("rung_index") is not None else []):
                uses[index] = uses.get(index, 0) + 1
        return uses

    @property
    def final_plan(self) -> Plan:
        return self.attempts[-1].plan if self.attempts else self.program_plan

    @property
    def step_counts(self) -> dict[int, int] | None:
        """How many times each optimizer step ran over the whole run; None when no attempt reported its
        steps (a program the adapter does not reach), where oomladder cannot tell."""
        if not any(a.reports_steps or a.step is not None for a in self.attempts):
            return None
        counts: dict[int, int] = {}
        for a in self.attempts:
            for step in a.steps:
                counts[step] = counts.get(step, 0) + 1
        return counts

    @property
    def repeated_steps(self) -> list[int]:
        return sorted(step for step, n in (self.step_counts or {}).items() if n > 1)

    @property
    def missing_steps(self) -> list[int]:
        """Steps up to the last one reached that no attempt ran."""
        counts = self.step_counts or {}
        return [step for step in range(1, max(counts, default=0) + 1) if step not in counts]

    @property
    def status(self) -> str:
        if self.ended:
            return self.ended["status"]
        return "running" if self.attempts else "not started"


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
        self.decisions: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.warnings: list[dict[str, Any]] = []
        self.observed = Plan()
        self.facts: dict[str, Any] = {}
        self.model: dict[str, Any] | None = None
        self.load: dict[str, Any] | None = None
        self.ended: dict[str, Any] | None = None
        self.first_run: dict[int, int] = {}  # step -> the first attempt that reported running it
        self.malformed = 0                   # records without the fields their type needs

    def add(self, r: dict[str, Any]) -> None:
        try:
            self._add(r)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.malformed += 1  # a record cut short or edited by hand: the rest of the run still folds

    def _add(self, r: dict[str, Any]) -> None:
        kind = r.get("type")
        if kind == schema.RUN_STARTED:
            self.run, self.ended = r, None  # a resumed run starts again
        elif kind == schema.ATTEMPT_STARTED:
            overrides = Plan.from_dict(r.get("plan"))
            launched = self.observed.merged(overrides)
            self.attempts[r["attempt"]] = AttemptView(
                number=r["attempt"], rung=r.get("rung"), reason=r.get("reason", ""), overrides=overrides,
                plan=launched, started=r["ts"], command=r.get("command", []),
                resumed_from=(r.get("resume_from") or {}).get("step"), launched=launched)
        elif kind == schema.OBSERVED:
            # Later observations fill fields earlier attempts died before reaching.
            self.observed = self.observed.merged(Plan.from_dict(r.get("plan")))
            self.facts.update({k: v for k, v in (r.get("facts") or {}).items() if v is not None})
            self.model = self.model or r.get("model")  # the first report: later ones see the model as loaded
            self.load = r.get("load") or self.load
            for a in self.attempts.values():
                a.launched = self.observed.merged(a.overrides)
                a.plan = a.in_place_plan(a.split, a.checkpointed)
        elif kind == schema.PROGRESS and r.get("attempt") in self.attempts:
            self._progress(self.attempts[r["attempt"]], r)
        elif kind == schema.IN_PLACE and r.get("attempt") in self.attempts:
            a = self.attempts[r["attempt"]]
            a.in_place.append(r)
            if r.get("outcome") == "split":
                if not r.get("per_step"):  # split ahead's splits are for their step alone
                    a.split = max(a.split, int(r["split"]))
                a.checkpointed = a.checkpointed or bool(r.get("checkpointing"))
                a.plan = a.in_place_plan(a.split, a.checkpointed)
        elif kind == schema.ATTEMPT_ENDED and r.get("attempt") in self.attempts:
            a = self.attempts[r["attempt"]]
            a.ended, a.status, a.exit_code = r["ts"], r["outcome"], r.get("exit_code")
            a.failure = Failure.from_dict(r["failure"]) if r.get("failure") else None
            for key in ("step", "max_steps", "peak", "peak_measure"):
                if r.get(key) is not None:
                    setattr(a, key, r[key])
            a.failed_batch = r.get("batch_shape")
        elif kind == schema.DECISION:
            self.decisions.append(r)
            if r.get("rolled_back") in self.attempts:
                self.attempts[r["rolled_back"]].rolled_back = True
        elif kind == schema.CHECKPOINT:
            self.checkpoints.append(r)
        elif kind == schema.WARNING:
            self.warnings.append(r)
        elif kind == schema.RUN_ENDED:
            self.ended = r

    def _progress(self, a: AttemptView, r: dict[str, Any]) -> None:
        if r.get("executed") and r.get("step") is not None:
            if r["step"] not in a.executed:
                a.executed.add(r["step"])
                first = self.first_run.setdefault(r["step"], a.number)
                if first < a.number:
                    a.ran_again.append(r["step"])
                if r.get("ts") is not None:
                    a.step_times[r["step"]] = r["ts"]
            if r.get("peak") is not None:  # each rank reports the step: the chart shows the highest
                a.step_peaks[r["step"]] = max(a.step_peaks.get(r["step"], 0), r["peak"])
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

    def view(self) -> RunView:
        ordered = [self.attempts[n] for n in sorted(self.attempts)]
        if any(not a.reports_steps for a in ordered):
            # A journal from before steps were reported counts them from the ranges it can infer.
            seen: set[int] = set()
            for a in ordered:
                if not a.reports_steps:
                    a.ran_again = sorted(seen.intersection(a.steps))
                seen.update(a.steps)
        return RunView(self.run, ordered, list(self.decisions), list(self.checkpoints), self.observed,
                       Facts.from_dict(self.facts), self.ended, self.model, self.load, list(self.warnings),
                       self.malformed)
