"""The journal's records as the fold keeps them: frozen values with named fields, not the dicts they were read from.

The fold (history.py) builds them from records that checks.py found sound, so `of` only converts; a reader
(run/decide.py, the views) reads fields, and a misspelt one is an AttributeError that mypy sees, not a `.get`
that quietly returns None. The JSON the journal holds is unchanged: these are read from it, never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oomladder.plan import Plan
from oomladder.status import InPlaceOutcome, RunStatus


@dataclass(frozen=True)
class DecisionRecord:
    """What the ladder (or a retry) chose after attempt `attempt`, and why (run/decisions.py writes it)."""

    attempt: int
    rung: str | None = None
    rung_index: int | None = None
    rung_indices: tuple[int, ...] = ()        # every rung a decision stacked (run/decide.py's climb)
    reason: str = ""
    plan: Plan | None = None                  # the next attempt's overrides; None where no rung was left
    changes: str | None = None
    skipped: tuple[tuple[str, str], ...] = ()  # (rung, why) for each rung left out
    estimate: dict[str, Any] | None = None     # the estimator's numbers behind it (memory/foresight.py)
    rolled_back: int | None = None             # the attempt whose plan it abandoned: its rung broke the program
    incompatible: tuple[tuple[str, int, str], ...] = ()  # (rung, index, the error it caused): never tried again

    @classmethod
    def of(cls, r: dict[str, Any]) -> DecisionRecord:
        return cls(attempt=r["attempt"], rung=r.get("rung"), rung_index=r.get("rung_index"),
                   rung_indices=tuple(r.get("rung_indices") or ()), reason=r.get("reason") or "",
                   plan=Plan.from_dict(r["plan"]) if r.get("plan") else None, changes=r.get("changes"),
                   skipped=tuple((name, why) for name, why in r.get("skipped") or ()), estimate=r.get("estimate"),
                   rolled_back=r.get("rolled_back"),
                   incompatible=tuple((name, index, why) for name, index, why in r.get("incompatible") or ()))

    @property
    def rungs_used(self) -> tuple[int, ...]:
        """The rungs (by index) its plan used: each one it stacked, or its one rung."""
        return self.rung_indices or ((self.rung_index,) if self.rung_index is not None else ())


@dataclass(frozen=True)
class RunEnd:
    """How the run ended (run/loop.py writes it): its status, the exit code oomladder returned, and why."""

    status: RunStatus
    exit_code: int | None = None
    reason: str = ""
    ts: float | None = None

    @classmethod
    def of(cls, r: dict[str, Any]) -> RunEnd:
        return cls(status=RunStatus(r["status"]), exit_code=r.get("exit_code"), reason=r.get("reason") or "",
                   ts=r.get("ts"))


@dataclass(frozen=True)
class WarningRecord:
    """Something a person should know that changes nothing (`about` names its kind, for whoever says it once)."""

    text: str
    about: str | None = None
    attempt: int | None = None
    ts: float | None = None

    @classmethod
    def of(cls, r: dict[str, Any]) -> WarningRecord:
        return cls(text=r["text"], about=r.get("about"), attempt=r.get("attempt"), ts=r.get("ts"))


@dataclass(frozen=True)
class LoadRequest:
    """What the program's `from_pretrained` was about to load, from the checkpoint's folder
    (worker/transformers/loading.py): the estimator's weights after an OOM while loading."""

    path: str | None = None
    config: dict[str, Any] | None = None  # the shape keys of its config.json
    files_bytes: int | None = None
    device_map: str | None = None
    default_dtype: str | None = None      # what a from_pretrained without dtype loads

    @classmethod
    def of(cls, r: dict[str, Any]) -> LoadRequest:
        return cls(path=r.get("path"), config=r.get("config"), files_bytes=r.get("files_bytes"),
                   device_map=r.get("device_map"), default_dtype=r.get("default_dtype"))


@dataclass(frozen=True)
class CheckpointRecord:
    """A whole emergency checkpoint an attempt saved (run/intake.py), or one a peer node saved (nodes/world.py)."""

    path: str
    step: int
    attempt: int | None = None
    kind: str = "emergency"
    adopted_from: int | None = None  # several nodes: the node whose rank 0 saved it

    @classmethod
    def of(cls, r: dict[str, Any]) -> CheckpointRecord:
        return cls(path=r["path"], step=r["step"], attempt=r.get("attempt"), kind=r.get("kind") or "emergency",
                   adopted_from=r.get("adopted_from"))


@dataclass(frozen=True)
class Try:
    """One out-of-memory error of a step met in place: the chunk of `rows` it tried, with what was held and what
    the try asked for (lower bounds on that chunk's need), and whether checkpointing was on."""

    rows: int
    held: int | None = None
    tried: int | None = None
    checkpointing: bool = False

    @classmethod
    def of(cls, t: dict[str, Any]) -> Try:
        return cls(int(t["rows"]), t.get("held"), t.get("tried"), bool(t.get("checkpointing")))


@dataclass(frozen=True)
class InPlaceRecord:
    """An out-of-memory error a worker met without a relaunch, and what it did (worker/recovery/in_place.py
    writes it)."""

    attempt: int
    outcome: InPlaceOutcome
    step: int | None = None
    split_before: int = 1
    split: int = 1
    rows: int | None = None
    seq: int | None = None
    ooms: int | None = None
    checkpointing_before: bool = False
    checkpointing: bool = False         # on after it, turned on by this recovery or an earlier one
    per_step: bool = False              # split ahead's: for this step alone, the plan stays as it was
    reason: str | None = None
    error: str | None = None
    seconds: float | None = None
    predicted: int | None = None        # split ahead had predicted this step fits: a misprediction
    numbers: dict[str, int] | None = None  # the error message's numbers (classify.py)
    peak: int | None = None              # the peak when it struck
    tries: tuple[Try, ...] = ()
    ts: float | None = None

    @classmethod
    def of(cls, r: dict[str, Any]) -> InPlaceRecord:
        oom: dict[str, Any] = r.get("oom") or {}
        return cls(attempt=r["attempt"], outcome=InPlaceOutcome(r["outcome"]), step=r.get("step"),
                   split_before=int(r.get("split_before") or 1), split=int(r.get("split") or 1), rows=r.get("rows"),
                   seq=r.get("seq"), ooms=r.get("ooms"), checkpointing_before=bool(r.get("checkpointing_before")),
                   checkpointing=bool(r.get("checkpointing")), per_step=bool(r.get("per_step")),
                   reason=r.get("reason"), error=r.get("error"), seconds=r.get("seconds"),
                   predicted=r.get("predicted"), numbers=r.get("numbers"), peak=oom.get("peak"),
                   tries=tuple(Try.of(t) for t in r.get("tries") or ()), ts=r.get("ts"))

    @property
    def recovered(self) -> bool:
        return self.outcome is InPlaceOutcome.SPLIT

    @property
    def turned_on_checkpointing(self) -> bool:
        """This recovery turned gradient checkpointing on (an earlier one may already have)."""
        return self.checkpointing and not self.checkpointing_before


@dataclass(frozen=True)
class ModelData:
    """The model as the worker saw it (worker/protocol/probe.py): its shape, for the estimate, and what trains."""

    shape: dict[str, Any] | None = None  # memory/shape.py's ModelShape, as a dict: the estimator reads it
    adapters: bool = False
    trainable_params: int | None = None
    lora_targets: tuple[str, ...] = ()
    trainer: str | None = None

    @classmethod
    def of(cls, m: dict[str, Any]) -> ModelData:
        return cls(shape=m.get("shape"), adapters=bool(m.get("adapters")), trainable_params=m.get("trainable_params"),
                   lora_targets=tuple(m.get("lora_targets") or ()), trainer=m.get("trainer"))
