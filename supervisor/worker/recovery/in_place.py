"""In-place recovery: an out-of-memory error in a training step met inside the running process, by
running the same micro-batch again in 2 (then 4, ...) chunks with their gradients accumulated and, where a
row per chunk still runs out, with gradient checkpointing turned on, instead of a relaunch (a new process,
imports, the model loaded again, a resume: seconds on a CPU, minutes on a GPU).

What makes it safe, and when it steps aside (the supervisor's relaunch stays the safety net):

- The gradients a failed step leaves are not trusted: a backward that died part-way has added part of
  its sum. They are put back as they were when the micro-step began. At the start of an accumulation
  cycle they are all None (the Trainer zeroes them with set_to_none), which costs nothing to keep. Inside
  a cycle, a copy is kept only when the trainable weights are small (adapters: LoRA and the like); a full
  fine-tune inside a cycle is not copied (a second copy of every gradient is what an OOM cannot afford),
  and an OOM there is relaunched, with the reason journaled.
- The RNG is put back where the step began, so the split step draws what a run with the smaller
  micro-batch draws (dropout's masks are drawn per chunk, as that plan draws them).
- What the failed forward changed besides the gradients is put back too (step_state.py): the buffers of modules
  in training mode (BatchNorm's running statistics) and the trainer's own counters (tokens seen, metrics), so the
  step counts once.
- A split is exact only where the rows are independent and each chunk keeps every position that counts. Where
  they are not (batch normalization in training mode, sequences packed into a row), it is refused with the
  reason and the supervisor relaunches.
- A split divides the plan's micro-batch evenly, so the plan it equals (micro-batch divided,
  accumulation multiplied) exists, and a later relaunch starts from it.
- Checkpointing recomputes the same activations: the gradients do not change. It is the ladder's own rung
  (the supervisor says whether the run's ladder has it), and the run goes on with it.
- Any error in a retry, or an OOM with chunks of one row (checkpointed, where it could be), ends in-place
  recovery for the step: the step's first OOM is raised as it was, and the supervisor relaunches. Never
  silent: a record says why, with each OOM's numbers for the estimator.

The framework's side (what a step is, how its inputs split, how its loss scales, how its model turns
checkpointing on) is the adapter's:
`recover` takes the step as a function of the number of chunks. Records go to the supervisor through
the progress file (protocol/files.py) as `{"in_place": {...}}` lines, journaled as `in_place` records.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from oomladder.worker.hooks import memcap
from oomladder.worker.protocol import files
from oomladder.worker.recovery import ahead, emergency, step_memory, step_state
from oomladder.worker.recovery.ahead import Choice
from oomladder.worker.state import STATE

T = TypeVar("T")


def enabled() -> bool:
    """In-place recovery is on unless the supervisor (--no-in-place) or the environment turns it off."""
    return os.environ.get("OOMLADDER_IN_PLACE", "1") != "0"


@dataclass
class Step:
    """What the adapter knows of the micro-step about to run."""

    step: int                      # the optimizer step it belongs to (1-based)
    rows: int | None               # the micro-batch's rows; None: no batch dimension found
    seq: int | None = None         # its sequence length, for the estimator
    batch: int | None = None       # the plan's micro-batch (what a split must divide)
    accumulation: int | None = None
    refuse: str | None = None      # why this program's step cannot be split, if it cannot
    exact: Callable[[], str | None] | None = None  # asked after an OOM: why these inputs cannot be split exactly
    keep: Callable[[], list[Any]] | None = None    # snapshots (step_state.py) of what a forward changes, to put back
    checkpoint: Callable[[], bool] | None = None  # turns gradient checkpointing on, if it can (asked at a floor)
    memory: Any = None             # the step's memory model (step_memory.StepMemory), for split ahead
    shapes: Callable[[int], tuple[int, int]] | None = None  # the largest chunk's (rows, tokens) in n chunks

    def shapes_in(self, pieces: int) -> tuple[int, int]:
        """`shapes(pieces)`, asked only where split ahead chose the step's split (which it needs)."""
        if self.shapes is None:
            raise ValueError("this step's adapter gives no chunk shapes: split ahead does not size it")
        return self.shapes(pieces)


def recover(run: Callable[[int], T], params: list[Any], where: Step, is_memory: Callable[[BaseException], bool]) -> T:
    """Run the micro-step as `run(parts)`: in the run's current split, and, after an OOM, in more chunks
    until it fits; at a row per chunk, with gradient checkpointing turned on (where the adapter can) and the
    chunks searched again from the run's split. Returns what `run` returned; raises the step's first OOM when
    in-place recovery steps aside."""
    if not enabled():
        return run(1)
    # Nothing to put back in a step never retried.
    guard = step_state.Guard(params, where.keep() if where.keep else None) if where.refuse is None else None
    had_checkpointing = STATE.checkpointed
    factor, choice = _first_split(where)
    started = time.monotonic()
    measure = step_memory.Measure() if choice is not None else None
    try:
        result = run(_pieces(factor, where.rows))
    except Exception as exc:  # noqa: BLE001 - only an OOM is met here; anything else goes on up as it was
        if not is_memory(exc):
            raise
        first = exc
    else:
        ahead.learn(where, choice, factor, measure)
        return result
    tries = [_try(first, factor, where.rows)]

    def tell(outcome: str, after: int, **why: Any) -> None:
        _tell(where, outcome, STATE.split, after, tries, started, had_checkpointing, **why)

    missed = {}
    if choice is not None:  # the model is told what this shape did not fit in, and the journal what it predicted
        predicted = choice.predicted if choice.pieces == factor else None
        where.memory.ran_out(*where.shapes_in(factor), choice.available, predicted)
        missed = {"predicted": predicted, "available": choice.available, "per_step": True}
    refused = where.refuse or (guard.why_not if guard else None) or _inexact(where)
    while True:
        emergency.free_failed_step(first)
        if guard is not None:
            refused = guard.restore() or refused
        nxt = None if refused else _next(where, factor, choice) or _checkpointed_at_floor(where, first, factor, tell)
        if nxt is None:
            why = refused or _at_floor(where, factor, had_checkpointing)
            tell("declined" if refused else "floor", factor, reason=why, **missed)
            raise first
        measure = step_memory.Measure() if choice is not None else None
        try:
            result = run(_pieces(nxt, where.rows))
        except Exception as exc:  # noqa: BLE001
            if not is_memory(exc):
                _failed(exc, nxt, guard, tell)
                raise first from None
            tries.append(_try(exc, nxt, where.rows))
            if choice is not None:
                where.memory.ran_out(*where.shapes_in(nxt), choice.available, None)
            emergency.free_failed_step(exc)
            factor = nxt
            continue
        ahead.learn(where, choice and Choice(nxt, *where.shapes_in(nxt), None, choice.available), nxt, measure)
        tell("split", nxt, **missed)
        if choice is None:  # no model to size the next steps by: they run in this split
            STATE.split = nxt
        return result


def _first_split(where: Step) -> tuple[int, Choice | None]:
    """The split the micro-step first runs in: the run's own or, with split ahead, the one this step's shape is
    predicted to need, for this step alone (ahead.py, whose choice comes with it)."""
    factor = STATE.split
    choice = (ahead.choose(where.memory, where.shapes, splits(where)) if where.memory is not None and where.shapes
              and where.rows and where.refuse is None else None)
    if choice is not None:
        factor = choice.pieces
    if factor > 1 and _inexact(where):
        # The run goes on split, but these inputs cannot be: whole, and an OOM is the supervisor's.
        return 1, None
    return factor, choice


def _checkpointed_at_floor(where: Step, first: BaseException, factor: int, tell: Callable[..., None]) -> int | None:
    """At a row per chunk: gradient checkpointing turned on, where the adapter can and it is not on yet, and the
    split to try next (the run's own: the activations are now recomputed, so it may fit again); None where it
    was not turned on. A model that refuses it ends in-place recovery, with the reason."""
    if where.checkpoint is None or STATE.checkpointed:
        return None
    try:
        STATE.checkpointed = where.checkpoint()
    except Exception as exc:  # noqa: BLE001 - a model that refuses it: the relaunch, with the reason
        error = f"{type(exc).__name__}: {str(exc)[:500]}"
        tell("failed", factor, error=error, reason=f"turning gradient checkpointing on failed ({error}); the "
             f"supervisor relaunches instead")
        raise first from None
    return STATE.split if STATE.checkpointed else None


def _at_floor(where: Step, factor: int, had_checkpointing: bool) -> str:
    """Why a step that still runs out of memory is not split further."""
    pieces = _pieces(factor, where.rows)
    turned = ", with gradient checkpointing on" if STATE.checkpointed and not had_checkpointing else ""
    return (f"the micro-batch of {where.rows} row{'s' if where.rows != 1 else ''} is already split as far as it "
            f"goes ({pieces} chunk{'s' if pieces > 1 else ''}){turned}")


def _failed(exc: BaseException, pieces: int, guard: step_state.Guard | None, tell: Callable[..., None]) -> None:
    """A retry that failed with something else than an OOM: said, and the step put back as it began (the
    supervisor relaunches)."""
    error = f"{type(exc).__name__}: {str(exc)[:500]}"
    emergency.free_failed_step(exc)
    tell("failed", pieces, error=error,
         reason=f"the step split in {pieces} chunks failed ({error}); the supervisor relaunches instead")
    if guard is not None:
        guard.restore()


def splits(where: Step) -> list[int]:
    """Whole, then each split the plan's micro-batch allows, smallest first."""
    found, factor = [1], next_split(1, where.batch, where.rows)
    while factor is not None:
        found.append(factor)
        factor = next_split(factor, where.batch, where.rows)
    return found


def _next(where: Step, factor: int, choice: Choice | None) -> int | None:
    """The split to try after an OOM at `factor`: the first the model, told of the OOM, predicts to fit (this step
    only), or the next divisor."""
    nxt = next_split(factor, where.batch, where.rows)
    if choice is None or nxt is None:
        return nxt
    bigger = [n for n in splits(where) if n > factor]
    picked = ahead.choose(where.memory, where.shapes_in, bigger) if bigger else None
    return picked.pieces if picked is not None else nxt


def _inexact(where: Step) -> str | None:
    """Why these inputs cannot be split exactly, as the adapter tells it (an error in telling: not known, so no)."""
    if where.exact is None:
        return None
    try:
        return where.exact()
    except Exception as exc:  # noqa: BLE001
        return f"whether the step splits exactly could not be told ({type(exc).__name__}: {str(exc)[:200]})"


def next_split(factor: int, batch: int | None, rows: int | None) -> int | None:
    """The next split: the smallest above `factor` that divides the plan's micro-batch evenly (so the plan
    it equals exists); None at the floor, when this micro-batch already runs a row per chunk.

    One divisor at a time, not a jump by the OOM's numbers: an OOM strikes at the first allocation past the
    limit, often the logits early in the forward, so what it proves per row is no more than the next divisor
    gives; and a part of the step that does not grow with the rows (bf16 copies of fp32 weights under
    autocast) would make a jump overshoot, leaving the run on more chunks than it needs all night."""
    if not rows or _pieces(factor, rows) >= rows:
        return None
    whole = batch if batch and batch >= rows else rows
    return next((n for n in range(factor + 1, whole + 1) if whole % n == 0), None)


def _try(exc: BaseException, pieces: int, rows: int | None) -> dict[str, Any]:
    """One OOM of the step: the rows of the chunk that ran out, what was held when it did and what it tried to
    allocate, and whether checkpointing was on. Taken before the frames are dropped, while what the chunk held is
    still held."""
    from oomladder.classify import parse_numbers
    return {"rows": -(-(rows or 1) // _pieces(pieces, rows)), "held": memcap.held(),
            "tried": parse_numbers(str(exc)).get("tried_to_allocate"), "checkpointing": STATE.checkpointed,
            "exc_type": type(exc).__name__, "message": str(exc)[:2000]}


def _pieces(factor: int, rows: int | None) -> int:
    """The chunks a micro-batch of `rows` runs in under a split of `factor` (a short last batch: fewer)."""
    return max(1, min(factor, rows or 1))


def _tell(where: Step, outcome: str, before: int, after: int, tries: list[dict[str, Any]], started: float,
          had_checkpointing: bool, reason: str | None = None, error: str | None = None,
          predicted: int | None = None, available: int | None = None, per_step: bool = False) -> None:
    """The record the supervisor journals as `in_place`, and a line on stderr: never silent. `tries` are the
    step's OOMs with their numbers, which the estimator takes as lower bounds on each chunk's need;
    `checkpointing` is gradient checkpointing turned on in place, by this step or an earlier one."""
    peak, measure = memcap.peak()
    first = tries[0]
    record = {"outcome": outcome, "step": where.step, "split_before": before, "split": after, "rows": where.rows,
              "seq": where.seq, "batch": where.batch, "accumulation": where.accumulation, "ooms": len(tries),
              "checkpointing_before": had_checkpointing, "checkpointing": STATE.checkpointed,
              "oom": {"exc_type": first["exc_type"], "message": first["message"], "peak": peak,
                      "peak_measure": measure},
              "tries": [{k: t[k] for k in ("rows", "held", "tried", "checkpointing")} for t in tries],
              "seconds": round(time.monotonic() - started, 3),
              **({"reason": reason} if reason else {}), **({"error": error} if error else {}),
              # Split ahead had predicted this step fits: a misprediction, which taught the model.
              **({"predicted": predicted, "available": available} if predicted is not None else {}),
              # Split ahead sizes every step: this split was for this step alone, the plan stays as it was.
              **({"per_step": True} if per_step else {})}
    try:
        files.append_progress({"in_place": record})
    except Exception as exc:  # the report must not take the step down
        print(f"oomladder: in-place record not written: {exc!r}", file=sys.stderr)
    if outcome == "split":
        turned = "gradient checkpointing turned on, " if STATE.checkpointed and not had_checkpointing else ""
        print(f"oomladder: out of memory in step {where.step}: recovered in place, {turned}the micro-batch of "
              f"{where.rows} now runs in {after} chunk{'s' if after > 1 else ''} with their gradients accumulated",
              file=sys.stderr, flush=True)
    else:
        print(f"oomladder: out of memory in step {where.step}, not recovered in place: {reason}", file=sys.stderr,
              flush=True)
