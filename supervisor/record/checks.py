"""What each journal field must hold for the fold to use it: a record with a field of another kind (a step of 2.5,
an attempt of "2", a status of ["x"], a time of "yesterday" or Infinity) is damaged, and the fold names it as
such instead of letting the value reach a view.

Pure: a record in, why it is damaged (or None) out. A field that is absent or null is left to the fold, which
knows which ones its record type needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from oomladder.classify import Kind
from oomladder.plan import Facts, Plan
from oomladder.record import schema

BIGGEST = 2**62   # larger integers are no step, size or count of a real run (and would not fit a C long)
LATEST = 1e11     # seconds since 1970: the year 5138


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -BIGGEST < v < BIGGEST


def _count(v: Any) -> bool:
    return _int(v) and v >= 0


def _number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v)) and abs(v) < BIGGEST
    except OverflowError:
        return False


def _time(v: Any) -> bool:
    return _number(v) and 0 <= v < LATEST


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _dict(v: Any) -> bool:
    return isinstance(v, dict)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _tuple_of(*checks: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and len(v) == len(checks) and all(c(x) for c, x in zip(checks, v))


def _typed_like(cls: Any) -> Callable[[Any], bool]:
    """An object whose fields that a `Plan` or `Facts` knows hold what their annotations say."""
    kinds: dict[str, Callable[[Any], bool]] = {"int": _int, "float": _number, "str": _str,
                                               "bool": lambda v: isinstance(v, bool)}
    wanted = {f.name: kinds[str(f.type).split("|")[0].strip()] for f in fields(cls)}

    def check(v: Any) -> bool:
        return isinstance(v, dict) and all(value is None or wanted[name](value) for name, value in v.items()
                                           if name in wanted)
    return check


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_KINDS = {k.value for k in Kind}
_FAILURE = {"kind": lambda v: isinstance(v, str) and v in _KINDS, "memory": _optional(_str), "summary": _optional(_str),
            "phase": _optional(_str), "step": _optional(_count), "rank": _optional(_int),
            "numbers": _optional(lambda v: isinstance(v, dict) and all(_str(k) and _count(x) for k, x in v.items()))}


def _failure(v: Any) -> bool:
    return isinstance(v, dict) and "kind" in v and all(check(v[name]) for name, check in _FAILURE.items() if name in v)


_COST = {"speed": _optional(lambda v: _number(v) and abs(v) < 100), "says": _str, "field": _optional(_str),
         "numerics": _optional(_str)}


def _ladder(v: Any) -> bool:
    """The ladder as run_started keeps it: what the report reads of it (its source, each rung's name and cost)."""
    def rung(r: Any) -> bool:
        cost = r.get("cost") if isinstance(r, dict) else None
        return isinstance(r, dict) and _optional(_str)(r.get("name")) and (cost is None or (
            isinstance(cost, dict) and all(check(cost[k]) for k, check in _COST.items() if k in cost)))
    return (isinstance(v, dict) and _optional(_str)(v.get("source"))
            and _optional(lambda rungs: isinstance(rungs, list) and all(map(rung, rungs)))(v.get("rungs")))


def _fields(**checks: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """An object whose named fields, where present and not null, hold what the checks say (others are passed over)."""
    return lambda v: isinstance(v, dict) and all(v.get(name) is None or check(v[name])
                                                 for name, check in checks.items())


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


# An OOM met in place (worker/recovery/in_place.py): each try's chunk, what was held and what it tried to allocate.
_TRY = _fields(rows=_count, held=_count, tried=_count, checkpointing=_bool)
# The model as the worker saw it (worker/protocol/probe.py): what the estimate reads of it.
_MODEL = _fields(shape=_dict, adapters=_bool, trainable_params=_count, lora_targets=_list_of(_str), trainer=_str)


def _steps(v: Any) -> bool:
    return isinstance(v, list) and all(_tuple_of(_count, _count)(r) and r[0] <= r[1] for r in v)


# A field means the same in every record type that has it; `memory_cap` is the one exception.
FIELDS: dict[str, Callable[[Any], bool]] = {
    "ts": _time, "attempt": _count, "step": _count, "max_steps": _count, "began_at": _count, "exit_code": _int,
    "rank": _int, "rung_index": _int, "split": _count, "split_before": _count, "rows": _count, "ooms": _count,
    "summed": _count, "rolled_back": _int, "peak": _count, "loss": _number, "learning_rate": _number,
    "seconds": _number,
    "duration": _number, "exited": _time, "max_attempts": _count, "max_wall_time": _number, "hang_timeout": _number,
    "node_timeout": _number, "nnodes": _count, "node_rank": _count,
    "phase": _str, "peak_measure": _str, "rung": _str, "reason": _str, "changes": _str, "status": _str,
    "outcome": _str, "text": _str, "about": _str, "path": _str, "kind": _str, "target": _str, "title": _str,
    "resume_failed": _str, "source": _str, "cwd": _str, "error": _str, "version": _str, "attempt_dir": _str,
    "cgroup": _str, "cpu_cap": _str, "pid": _count, "split_ahead": _count, "predicted": _count, "measured": _count,
    "available": _count, "per_step": _bool, "seq": _count, "checkpointing": _bool, "checkpointing_before": _bool,
    "tries": lambda v: isinstance(v, list) and all(_TRY(t) and t.get("rows") is not None for t in v),
    "adopted_from": _count,
    "command": _list_of(_str), "notify": _list_of(_str), "batch_shape": _list_of(_count),
    "plan": _typed_like(Plan), "initial": _typed_like(Plan), "facts": _typed_like(Facts),
    "model": _MODEL, "load": _dict, "estimate": _dict, "ladder": _ladder, "oom": _fields(peak=_count),
    "numbers": _FAILURE["numbers"], "failure": _failure, "steps": _steps,
    "resume_from": lambda v: (isinstance(v, dict) and _optional(_count)(v.get("step"))
                              and _optional(_str)(v.get("path"))),
    "skipped": _list_of(_tuple_of(_str, _str)), "rung_indices": _list_of(_int),
    "incompatible": _list_of(_tuple_of(_str, _int, _str)),
}
PER_TYPE: dict[str, dict[str, Callable[[Any], bool]]] = {
    "run_started": {"memory_cap": _count},
    "observed": {"memory_cap": _dict},
    "run_ended": {"status": lambda v: v in schema.RUN_STATUSES},
    "attempt_started": {"attempt": lambda v: _count(v) and v >= 1},  # 0 is the run's own (its environment)
    "attempt_ended": {"outcome": lambda v: v in schema.ATTEMPT_OUTCOMES},
    "in_place": {"outcome": lambda v: v in schema.IN_PLACE_OUTCOMES},
}
# What the fold keeps of these types and the views read later must be there.
REQUIRED: dict[str, tuple[str, ...]] = {
    "run_started": ("ts",), "attempt_started": ("ts", "attempt"), "attempt_ended": ("ts", "attempt", "outcome"),
    "decision": ("attempt",), "checkpoint": ("path", "step"), "warning": ("text",), "run_ended": ("status",),
    "in_place": ("attempt", "outcome"), "progress": ("attempt",),
}


def damage(record: dict[str, Any]) -> str | None:
    """Why `record` cannot be folded as its type says, or None: a needed field missing, or a field of another kind."""
    kind = record.get("type")
    if not isinstance(kind, str):
        return f"type is {_short(kind)}"
    for name in REQUIRED.get(kind, ()):
        if record.get(name) is None:
            return f"no {name}"
    own = PER_TYPE.get(kind, {})
    for name, value in record.items():
        check = own.get(name) or FIELDS.get(name)
        if value is not None and check is not None and not check(value):
            return f"{name} is {_short(value)}"
    return None


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:39] + "…"
