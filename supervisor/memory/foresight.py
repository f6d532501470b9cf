"""The estimator in the loop: after an OOM, climb as many rungs at once as the estimate says are
needed, and pass over rungs whose saving is too small to matter.

Walking one rung per attempt costs a whole start-up, load and resume for each rung that was never
going to be enough (bf16 on a model whose logits dominate). Skipping such a rung to reach a later
one is not the answer on its own: the later rungs cost more speed. So the rungs are taken in the
ladder's order, as it prefers them, and stacked until the calibrated estimate fits; only a rung
that saves less than a tenth of what is missing is passed over.

The estimate is calibrated by the journal: a step that ran says how far off the arithmetic is
(measured peak - estimate), and an attempt that ran out of memory says its true need was above the
device (capacity - estimate). The correction is added, not multiplied: what the arithmetic misses
is mostly fixed (thread stacks and malloc arenas on the CPU, workspaces on CUDA), and the steps
that calibrate it are often the short first ones. Pure: the view in, a `Decision` out.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from oomladder.classify import Failure, Kind, is_fragmented
from oomladder.errors import UsageError
from oomladder.ladder import Decision, Ladder, PassOver, climb, next_plan
from oomladder.memory.estimate import Estimate, Term, Workload, estimate, load_estimate, usable
from oomladder.memory.shape import ModelShape, from_config
from oomladder.plan import Facts, Plan
from oomladder.record.history import RunView
from oomladder.units import format_size

MATERIAL = 0.10   # a rung must save at least this share of what is missing to be worth its cost


@dataclass(frozen=True)
class Fit:
    """What a plan needs (estimate x calibration) against what the device offers."""

    view: RunView
    batch: tuple[int, int]         # (micro-batch, sequence length) of the step that failed
    capacity: int
    offset: int                    # bytes the arithmetic misses, from the journal

    def need(self, plan: Plan) -> int | None:
        guess = estimate_for(self.view, plan, self.batch)
        return None if guess is None else guess.peak + self.offset

    def estimate(self, plan: Plan) -> Estimate | None:
        """The uncalibrated estimate, for its split of the peak by term."""
        return estimate_for(self.view, plan, self.batch)


def estimate_for(view: RunView, plan: Plan, batch: Any) -> Estimate | None:
    """The estimate of `plan` at the sequence length of `batch`, from the shape the worker reported."""
    model = view.model
    if model is None or model.shape is None:
        return None  # not a Trainer program, or it died before reporting: the ladder walks without foresight
    try:
        shape = ModelShape.from_dict(model.shape)
        micro, seq = int(batch[0]), int(batch[1])
    except (KeyError, TypeError, ValueError, IndexError):
        return None  # a shape it could not read whole, or no batch measured yet
    work = Workload(batch=micro, seq_len=seq, adapters=model.adapters,
                    trainable_params=int(model.trainable_params or shape.params),
                    lora_targets=model.lora_targets, trainer=model.trainer)
    return estimate(shape, plan, work.under(plan), view.facts.device or "cpu")


@dataclass(frozen=True)
class LoadFit:
    """What loading a plan's model needs, from the load request's config, against what the device offers."""

    shape: ModelShape
    device: str
    file_bytes: int | None
    capacity: int
    offset: int = 0
    batch: tuple[int, ...] = ()

    def need(self, plan: Plan) -> int:
        return load_estimate(self.shape, plan, self.device, self.file_bytes).peak + self.offset


# What a plan is measured against: the step's memory, or (after an OOM while the model loaded) the load's.
Yardstick = Fit | LoadFit


def fit_for(view: RunView, memory_cap: int | None) -> Yardstick | None:
    """The yardstick for the last attempt's failure, or None when there is nothing to measure against."""
    last = view.attempts[-1] if view.attempts else None
    if last is not None and last.failure is not None and last.failure.phase == "load":
        # Offloading is device_map's accounting, not the allocator's: no estimate of it, one rung at a time.
        return load_fit(view, memory_cap) if last.failure.kind is not Kind.OFFLOADED else None
    batch = last.failed_batch or last.step_batch if last else None
    device = view.facts.device or "cpu"
    if memory_cap:
        capacity = usable(memory_cap, device, capped=True)
    elif device == "cuda" and view.facts.device_memory:
        capacity = usable(view.facts.device_memory, device, capped=False)
    else:
        return None  # the CPU with no cap: no device size to fit in
    if batch is None or estimate_for(view, view.final_plan, batch) is None:
        return None
    return Fit(view, (int(batch[0]), int(batch[1])), capacity, calibration(view, capacity))


def load_fit(view: RunView, memory_cap: int | None) -> LoadFit | None:
    """After an OOM while the model loaded: the weights alone, from the checkpoint's config, since no step ran."""
    request = view.load
    if request is None or request.config is None:
        return None
    try:
        shape = from_config(request.config)
    except UsageError:
        return None
    device = view.facts.device or "cpu"
    capacity = _capacity(view, memory_cap, device)
    if capacity is None:
        return None
    fit = LoadFit(shape, device, request.files_bytes, capacity)
    offset = 0
    for a in view.attempts:
        if a.failure is not None and a.failure.is_memory and a.failure.phase == "load":
            offset = max(offset, proven_need(a, capacity) - fit.need(a.plan))
    return dataclasses.replace(fit, offset=offset)


def load_wall(view: RunView, memory_cap: int | None) -> str | None:
    """Under the CPU emulation, a checkpoint whose files are mapped while the model fills may not load in any
    plan, though its quantized form would fit a real device of that size: what to say when that is so."""
    last = view.attempts[-1].failure if view.attempts else None
    fit = load_fit(view, memory_cap)
    if fit is None or fit.device != "cpu" or not memory_cap or (last is not None and last.kind is Kind.OFFLOADED):
        return None
    least = min(fit.need(fit_plan) for fit_plan in (Plan(load_dtype="bfloat16"), Plan(load_dtype="float16")))
    if least <= fit.capacity:
        return None
    mapped = fit.file_bytes or 0
    return (f"under the CPU emulation the checkpoint's files ({format_size(mapped)}) are mapped while the model's "
            f"weights fill, so loading needs at least {format_size(least)}, more than the {format_size(fit.capacity)} "
            f"usable under --memory-cap {format_size(memory_cap)}; quantizing does not lower that on the CPU. A "
            f"real device of this size could load it in 8-bit or 4-bit: try it there, or give a larger --memory-cap")


def load_warning(view: RunView, memory_cap: int | None, plan: Plan) -> str | None:
    """Before an attempt: the load of `plan` will not fit the CPU emulation only because the checkpoint's files
    are mapped while the weights fill (a real device of this size would not map them)."""
    fit = load_fit(view, memory_cap)
    if fit is None or fit.device != "cpu" or not memory_cap:
        return None
    estimate = load_estimate(fit.shape, plan, fit.device, fit.file_bytes)
    if estimate.peak <= fit.capacity or estimate.parts[Term.WEIGHTS] > fit.capacity:
        return None
    mapped, weights = format_size(estimate.parts[Term.FILE_MAPPING]), format_size(estimate.parts[Term.WEIGHTS])
    return (f"under the CPU emulation this checkpoint's files ({mapped}) are mapped while its weights ({weights}) "
            f"fill: {format_size(estimate.peak)} "
            f"to load, more than the {format_size(fit.capacity)} usable; a real device of this size would not map them")


def _capacity(view: RunView, memory_cap: int | None, device: str) -> int | None:
    if memory_cap:
        return usable(memory_cap, device, capped=True)
    if device == "cuda" and view.facts.device_memory:
        return usable(view.facts.device_memory, device, capped=False)
    return None


def calibration(view: RunView, capacity: int) -> int:
    """Measured minus estimated: the median over the steps that ran, raised to what each OOM proves."""
    misses = []
    for a in view.attempts:
        if not a.step_peak or not a.step_batch:
            continue
        guess = estimate_for(view, a.plan, a.step_batch)
        if guess is not None:
            misses.append(a.step_peak - guess.peak)
    offset = int(statistics.median(misses)) if misses else 0
    for a in view.attempts:
        if a.failure is not None and a.failure.memory == "device" and a.failure.phase != "eval" and a.failed_batch:
            guess = estimate_for(view, a.plan, a.failed_batch)
            if guess is not None:
                offset = max(offset, proven_need(a, capacity) - guess.peak)
        for plan, batch, need in in_place_proofs(a, capacity):
            guess = estimate_for(view, plan, batch)
            if guess is not None:
                offset = max(offset, need - guess.peak)
    return offset


def in_place_proofs(attempt: Any, capacity: int) -> list[tuple[Plan, list[int], int]]:
    """(plan, batch, proven need) for each OOM its worker met in place (worker/recovery/in_place.py): the plan with that
    chunk as its micro-batch (and checkpointing, if on) needs more than there was, and at least what was held plus what
    was tried. The smallest chunks' OOMs strike furthest into the step: the strongest bounds a step-1 OOM leaves."""
    proofs = []
    for record in attempt.in_place:
        for t in record.tries if record.seq else ():
            held, tried = t.held, t.tried
            need = max(capacity + 1, held + tried if held is not None and tried is not None else 0)
            plan = attempt.launched.replace(per_device_train_batch_size=t.rows)
            proofs.append((plan.replace(gradient_checkpointing=True) if t.checkpointing else plan,
                           [t.rows, record.seq], need))
    return proofs


def proven_need(attempt: Any, capacity: int) -> int:
    """What an attempt that ran out of memory is proven to have needed: more than there was, and at least
    what it held when the allocation failed plus that allocation."""
    need = capacity + 1
    tried = attempt.failure.numbers.get("tried_to_allocate")
    if attempt.peak is not None and tried is not None:
        need = max(need, attempt.peak + tried)
    return need


def climb_to_fit(ladder: Ladder, plan: Plan, facts: Facts, failure: Failure, uses: Mapping[int, int],
                 fit: Yardstick | None, exclude: frozenset[int] = frozenset()) -> Decision:
    """The next plan after an out-of-memory error: one rung, as `next_plan` gives it, or as many rungs, stacked,
    as the estimate says it takes to fit. Rungs in `exclude` (ones that broke this program) are left out."""
    first = next_plan(ladder, plan, facts, failure, uses, exclude)
    if fit is None or failure.phase == "eval" or first.exhausted or is_fragmented(failure):
        return first  # fragmented: the memory is there in pieces, which no estimate of the plan sees
    before = fit.need(plan)
    if before is None or before <= fit.capacity:
        return first
    need_of = fit.need

    def need(p: Plan) -> int:
        return need_of(p) or 0

    after, chosen, skipped = _stack(ladder, plan, facts, failure, uses, fit, exclude, pass_over(need, fit.capacity))
    if not chosen:
        # No rung saves a real share of what is missing: take every rung that saves anything at all, stacked,
        # rather than walk the ladder one attempt per rung the estimate already says is not enough.
        after, chosen, skipped = _stack(ladder, plan, facts, failure, uses, fit, exclude, saves_nothing(need))
    if not chosen:
        return first  # the estimate sees no rung that saves memory here: the ladder's own next rung, as without it
    names = [d.rung for d in chosen if d.rung is not None]
    verdict = "fits" if after <= fit.capacity else "is still estimated above it; tried as the best the ladder has"
    numbers = (f"estimated peak {format_size(before)} → {format_size(after)} for {format_size(fit.capacity)} usable "
               f"({verdict})")
    guess = fit.estimate(plan) if isinstance(fit, Fit) else None  # a load's estimate is the weights alone
    where = dominant_text(guess) if guess is not None else None
    return Decision(chosen[-1].plan, _joined(names), chosen[0].rung_index,
                    (f"{where}: " if where else "") + "; ".join(d.reason for d in chosen) + f"; {numbers}",
                    tuple((n, w) for n, w in skipped.items() if n not in names),
                    tuple(d.rung_index for d in chosen if d.rung_index is not None),
                    {"before": before, "after": after, "capacity": fit.capacity, "calibration": fit.offset,
                     "batch": list(fit.batch), "split": dict(guess.split) if guess else None,
                     "dominant": (guess.dominant() or (None,))[0] if guess else None})


def _stack(ladder: Ladder, plan: Plan, facts: Facts, failure: Failure, uses: Mapping[int, int], fit: Yardstick,
           exclude: frozenset[int], rule: PassOver) -> tuple[int, list[Decision], dict[str, str]]:
    """The rungs in ladder order, stacked until the estimate fits, passing over those `rule` rejects."""
    need = fit.need(plan) or 0
    chosen: list[Decision] = []
    skipped: dict[str, str] = {}
    for step in climb(ladder, plan, facts, failure, uses, rule, exclude):
        for name, why in step.decision.skipped:
            skipped.setdefault(name, why)
        if step.decision.plan is None or step.decision.rung is None:  # exhausted
            break
        if step.passed_over is not None:
            skipped.setdefault(step.decision.rung, step.passed_over)
            continue
        chosen.append(step.decision)
        need = fit.need(step.decision.plan) or 0
        if need <= fit.capacity:
            break
    return need, chosen, skipped


def saves_nothing(need: Callable[[Plan], int]) -> PassOver:
    """The fallback rule: pass over only the rungs that save no memory at all, or add some."""
    def why(before: Plan, plan: Plan) -> str | None:
        current, after = need(before), need(plan)
        if after < current:
            return None
        return (f"estimated to add {format_size(after - current)}" if after > current
                else "estimated to save nothing") + ": passed over"
    return why


def dominant_text(guess: Estimate) -> str | None:
    """`optimizer states are 52 % of the estimated peak`, for the term that dominates it."""
    top = guess.dominant()
    if top is None:
        return None
    name, share = top
    return f"{name} are {share * 100:.0f} % of the estimated peak"


def pass_over(need: Callable[[Plan], int], capacity: int) -> PassOver:
    """The rule both the loop and `oomladder plan` climb by: a rung that leaves the plan above `capacity`
    and saves less than a tenth of what is missing (or adds memory) is not worth its cost."""
    def why(before: Plan, plan: Plan) -> str | None:
        current, after = need(before), need(plan)
        missing = current - capacity
        if after <= capacity or current - after >= MATERIAL * missing:
            return None
        saves = (f"estimated to save {format_size(current - after)} of the {format_size(missing)} missing"
                 if after < current else f"estimated to add {format_size(after - current)} where "
                                         f"{format_size(missing)} is missing")
        return f"{saves}: passed over for rungs that save more"
    return why


def _joined(names: list[str]) -> str:
    """`bf16 + halve_batch x2`: each rung once, in order, with how often it applied."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return " + ".join(name if n == 1 else f"{name} x{n}" for name, n in counts.items())
