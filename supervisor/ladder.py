"""The ladder: an ordered list of rungs read from YAML, and the pure step from (plan, failure) to
the next plan.

Each failure walks the ladder from the top. A rung that already did its work skips itself
(bf16 on a bf16 plan), so walking from the top keeps the order the file gives while letting a
later failure of a different kind (evaluation, host memory) reach the rungs made for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import yaml

import strategies
from strategies.base import Applied, Strategy
from supervisor.classify import Failure, is_fragmented
from supervisor.errors import LadderFileError, StrategyError
from supervisor.plan import Facts, Plan

LADDER_VERSION = 1
DEFAULT_LADDER = "default.yaml"


@dataclass(frozen=True)
class Rung:
    index: int
    strategy: Strategy
    times: int | None          # how often this rung may apply; None is "until it skips itself"

    @property
    def name(self) -> str:
        return self.strategy.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.strategy.options), "times": self.times}


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
    rung_indices: tuple[int, ...] = ()     # every rung a stacked decision used (supervisor/foresight.py)
    estimate: dict[str, Any] | None = None  # the estimator's numbers behind a stacked decision

    @property
    def exhausted(self) -> bool:
        return self.plan is None


def load_ladder(path: str | Path | None = None) -> Ladder:
    """The ladder in `path`, or the default one shipped with oomladder."""
    if path is None:
        return parse_ladder(default_ladder_path().read_text(), f"default ladder ({DEFAULT_LADDER})")
    path = Path(path)
    if not path.exists() or path.is_dir():
        raise LadderFileError(f"ladder file '{path}' does not exist: give the path of a YAML ladder "
                              f"(see configs/default.yaml) or leave out --ladder to use the default")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise LadderFileError(f"ladder file '{path}' cannot be read ({exc}): check its permissions and "
                              f"encoding") from None
    return parse_ladder(text, str(path))


def ladder_from_journal(data: dict[str, Any]) -> Ladder:
    """The ladder a run recorded in its journal: a resumed run walks the same one, whatever the file says now."""
    rungs = [{r["name"]: {**r.get("params", {}), **({"times": r["times"]} if r.get("times") else {})}}
             for r in data.get("rungs", [])]
    return parse_ladder(yaml.safe_dump({"version": LADDER_VERSION, "rungs": rungs}), data.get("source", "journal"))


def default_ladder_path() -> Path:
    """configs/ beside the packages in a checkout or editable install; supervisor/configs in a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs" / DEFAULT_LADDER, here / "configs" / DEFAULT_LADDER):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"oomladder's {DEFAULT_LADDER} is missing from the installation")  # a packaging bug


def parse_ladder(text: str, source: str) -> Ladder:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise LadderFileError(f"ladder file '{source}' is not valid YAML{at} ({problem}): fix it, "
                              f"or compare with configs/default.yaml") from None
    if isinstance(data, dict) and set(data) - {"version", "rungs", "description"}:
        unknown = sorted(map(str, set(data) - {"version", "rungs", "description"}))
        raise LadderFileError(f"ladder file '{source}' has unknown keys {unknown}: only 'version', "
                              f"'description' and 'rungs' are read")
    if not isinstance(data, dict) or not isinstance(data.get("rungs"), list) or not data["rungs"]:
        raise LadderFileError(f"ladder file '{source}' needs a non-empty 'rungs:' list of strategy names "
                              f"(see configs/default.yaml)")
    version = data.get("version", LADDER_VERSION)
    if version != LADDER_VERSION:
        raise LadderFileError(f"ladder file '{source}' is version {version!r}; this oomladder reads version "
                              f"{LADDER_VERSION}")
    return Ladder(tuple(_parse_rung(i, entry, source) for i, entry in enumerate(data["rungs"])), source)


def _parse_rung(index: int, entry: Any, source: str) -> Rung:
    where = f"rung {index + 1} of ladder file '{source}'"
    if isinstance(entry, str):
        name, params = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        (name, params), = entry.items()
        params = params or {}
        if not isinstance(params, dict):
            raise LadderFileError(f"{where}: the parameters of '{name}' must be a mapping like "
                                  f"{{min_batch: 2}}, not {params!r}")
    else:
        raise LadderFileError(f"{where} must be a strategy name or 'name: {{param: value}}', not {entry!r}")
    params = dict(params)
    times = params.pop("times", None)
    if times is not None and (not isinstance(times, int) or isinstance(times, bool) or times < 1):
        raise LadderFileError(f"{where}: 'times' must be a whole number of 1 or more, not {times!r}")
    try:
        strategy = strategies.get(str(name))(**params)
    except StrategyError as exc:
        raise StrategyError(f"{where}: {exc}") from None
    if times is None and not strategy.repeatable:
        times = 1
    return Rung(index, strategy, times)


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
