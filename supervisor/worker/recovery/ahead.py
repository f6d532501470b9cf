"""Split ahead: before each micro-step, the smallest split of its rows that the step's memory model
(step_memory.py) predicts will fit what the device has left, chosen for that step alone. A batch that fits runs
whole; a long one runs in as many chunks as it needs, exactly as in-place recovery runs them (in_place.py), under the
same exactness rules. In-place recovery stays the safety net: a prediction that was too low ends in an OOM met in
place, which teaches the model (and is journaled with the prediction that missed).

What each optimizer step's micro-steps did (the split, the largest prediction and measurement) is kept here until
the adapter reports the step (`take`), and goes to the journal with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from oomladder.worker.hooks import memcap
from oomladder.worker.recovery import step_memory
from oomladder.worker.state import STATE


@dataclass(frozen=True)
class Choice:
    """A micro-step's split as chosen before it ran."""

    pieces: int                 # chunks (1: whole)
    rows: int                   # the largest chunk's rows and tokens per row, which the prediction is for
    seq: int
    predicted: int | None       # bytes over what was held, for that chunk; None: the model could not say
    available: int | None       # bytes the device had left when it began


def memory(key: object, build: Callable[[], step_memory.StepMemory]) -> step_memory.StepMemory:
    """The process's model, built once per `key` (a change of plan in place starts a new one)."""
    if STATE.ahead.memory is None or STATE.ahead.key != key:
        STATE.ahead.memory, STATE.ahead.key = build(), key
    return STATE.ahead.memory


def choose(model: step_memory.StepMemory, shapes: Callable[[int], tuple[int, int]],
           splits: list[int]) -> Choice | None:
    """The first of `splits` (1, then each divisor the plan allows) whose largest chunk is predicted to fit;
    the last one where none is; None where the model cannot say or nothing bounds the device."""
    available = memcap.available()
    if available is None or not step_memory.enabled():
        return None
    choice = None
    for pieces in splits:
        rows, seq = shapes(pieces)
        predicted = model.predict(rows, seq)
        if predicted is None:
            return None
        choice = Choice(pieces, rows, seq, predicted, available)
        if predicted <= available * (1 - model.margin):
            break
    return choice


def learn(where, choice: Choice | None, pieces: int, measure: step_memory.Measure | None) -> None:
    """A micro-step (in_place.Step `where`) that ran in `pieces` chunks: its measured memory teaches the model, and
    its split goes to the step's record."""
    measured = measure.extra() if measure is not None else None
    if measured is not None and where.memory is not None and where.shapes is not None:
        where.memory.observe(*where.shapes(pieces), measured)
    if choice is not None:
        note(where.step, choice, pieces, measured)


def note(step: int, choice: Choice | None, pieces: int, measured: int | None) -> None:
    """A micro-step of optimizer step `step` ran in `pieces` chunks and took `measured` bytes over what it held."""
    record = STATE.ahead.step if STATE.ahead.step is not None and STATE.ahead.step["step"] == step else None
    if record is None:
        record = STATE.ahead.step = {"step": step, "split_ahead": 1, "predicted": None, "measured": None}
    if choice is not None and choice.pieces > 1:
        record["split_ahead"] = max(record["split_ahead"], choice.pieces)
    if choice is not None and choice.predicted is not None:
        record["predicted"] = max(record["predicted"] or 0, choice.predicted)
    if measured is not None and pieces == (choice.pieces if choice else pieces):
        record["measured"] = max(record["measured"] or 0, measured)


def take(step: int) -> dict:
    """What split ahead did in optimizer step `step`, for its progress record (empty when it did nothing)."""
    record, STATE.ahead.step = STATE.ahead.step, None
    if record is None or record["step"] != step:
        return {}
    return {k: v for k, v in record.items() if k != "step" and v is not None}
