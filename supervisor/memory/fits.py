"""Which plan of the ladder fits, before launching (the `oomladder plan` command, cli/plan.py): the estimated
peak of each rung's plan, and the first that fits the device.

The rungs are walked as the supervisor would walk them on successive out-of-memory errors, each
one's plan built on the last, with the same estimator the loop uses (memory/estimate.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from oomladder.classify import Failure, Kind
from oomladder.ladder import Ladder, climb
from oomladder.memory.estimate import TERMS, Estimate, Term, Workload, estimate, usable
from oomladder.memory.foresight import dominant_text, pass_over
from oomladder.memory.shape import ModelShape
from oomladder.plan import Facts, Plan, changes, describe_changes
from oomladder.units import format_size

if TYPE_CHECKING:  # rich is imported where a table is drawn
    from rich.console import Group
    from rich.text import JustifyMethod

_PLANNED_OOM = Failure(Kind.CUDA_OOM, "device", "planned: the estimate is above the device", phase="train")


@dataclass(frozen=True)
class Row:
    rung: str
    plan: Plan
    changes: str
    estimate: Estimate
    fits: bool
    passed_over: bool = False   # saves too little of what is missing: the loop would not take it either
    cost: str = "-"             # the rung's expected cost in speed (Strategy.cost)
    skipped: tuple[tuple[str, str], ...] = ()  # rungs that did not apply on the way here, with why
    before: Plan | None = None  # the plan the rung changed (a passed-over rung's change is not kept)


def walk(ladder: Ladder, shape: ModelShape, start: Plan, work: Workload, facts: Facts, capacity: int) -> list[Row]:
    """The start and every rung after it, as successive OOMs would climb them, passing over the rungs
    the supervisor's loop would pass over (the same climb and rule as memory/foresight.py)."""
    device = facts.device or "cuda"

    def peak_of(plan: Plan) -> Estimate:
        return estimate(shape, plan, work.under(plan), device)

    rows = [Row("start", start, "-", peak_of(start), peak_of(start).peak <= capacity)]
    rule = pass_over(lambda plan: peak_of(plan).peak, capacity)
    for step in climb(ladder, start, facts, _PLANNED_OOM, {}, rule):
        after, rung, index = step.decision.plan, step.decision.rung, step.decision.rung_index
        if after is None or rung is None or index is None:  # exhausted
            if step.decision.skipped:
                rows[-1] = dataclasses.replace(rows[-1], skipped=rows[-1].skipped + step.decision.skipped)
            break
        guess = peak_of(after)
        cost = ladder.rungs[index].strategy.cost.short()
        rows.append(Row(rung, after, describe_changes(step.before, after),
                        guess, guess.peak <= capacity, step.passed_over is not None, cost, step.decision.skipped,
                        step.before))
    return rows


def weights_line(shape: ModelShape) -> str:
    """What the weights alone take in each format: the number people get wrong."""
    def at(dtype: str, quant: str) -> str:
        plan = Plan(load_dtype=dtype, quantization=quant)
        return format_size(estimate(shape, plan, Workload(1, 1, True, 0)).parts[Term.WEIGHTS])
    billions = shape.params / 1e9
    return (f"weights alone, {billions:.2f}B parameters: fp32 {at('float32', 'none')}, bf16 {at('bfloat16', 'none')}, "
            f"8-bit {at('bfloat16', 'int8')}, 4-bit NF4 {at('bfloat16', 'nf4')}. 8-bit is about 1 byte per "
            f"parameter: a 14B model needs about 14 GB in 8-bit, not the 7 GB sometimes quoted; 7 GB is 4-bit.")


# The plan's settings as the table's narrow column names them (report.json and --format json keep the full names).
SHORT = {"per_device_train_batch_size": "batch", "gradient_accumulation_steps": "accumulation",
         "per_device_eval_batch_size": "eval batch", "load_dtype": "load dtype", "quantization": "base weights",
         "gradient_checkpointing": "checkpointing", "dataloader_num_workers": "workers", "optim": "optimizer",
         "fused_cross_entropy": "fused loss", "activation_offloading": "offloading"}


def short_changes(before: Plan, after: Plan) -> str:
    """`batch 16→8` and `accumulation 1→2`, a line each: what a rung changes, in a narrow column."""
    def shown(value: Any) -> str:
        return "unset" if value is None else ("on" if value else "off") if isinstance(value, bool) else str(value)
    return "\n".join(f"{SHORT.get(name, name)} {shown(old)}→{shown(new)}" for name, old, new in changes(before, after)
                     ) or "-"


def render(rows: list[Row], capacity: int, title: str) -> Group:
    """Two tables that each fit a 120-column terminal: the rungs (what each changes, its estimated peak, its
    cost, whether it fits), then where each plan's estimated peak goes, term by term. A rung's name is never
    cut; what a rung changes wraps, and a long value folds, rather than lose its end."""
    from rich import box
    from rich.console import Group
    from rich.table import Table

    first = next((i for i, r in enumerate(rows) if r.fits), None)
    styles = ["bold green" if i == first else "dim" if r.passed_over else None for i, r in enumerate(rows)]
    rungs = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    rungs.add_column("#", justify="right", no_wrap=True)
    rungs.add_column("rung", no_wrap=True)
    rungs.add_column("what changes", overflow="fold")
    columns: tuple[tuple[str, JustifyMethod], ...] = (("estimated peak", "right"), ("cost", "right"), ("fits", "left"))
    for column, justify in columns:
        rungs.add_column(column, justify=justify, no_wrap=True)
    for i, r in enumerate(rows):
        fits = "first to fit" if i == first else ("passed over" if r.passed_over else "yes" if r.fits else "no")
        rungs.add_row(str(i), r.rung, short_changes(r.before, r.plan) if r.before is not None else "-",
                      format_size(r.estimate.peak), r.cost, fits, style=styles[i])
    # What is alive at each plan's peak, term by term: the split the loop decides by. A term not alive at the
    # peak (activations, when the peak is the optimizer step) shows as "-".
    split = Table(title="where each plan's estimated peak goes", title_justify="left", box=box.SIMPLE_HEAD)
    split.add_column("#", justify="right", no_wrap=True)
    split.add_column("rung", no_wrap=True)
    for term in TERMS:
        split.add_column(term, justify="right", no_wrap=True)
    for i, r in enumerate(rows):
        split.add_row(str(i), r.rung, *(format_size(r.estimate.split[t]) if r.estimate.split.get(t) else "-"
                                        for t in TERMS), style=styles[i])
    return Group(rungs, split)


def skipped_line(rows: list[Row]) -> str | None:
    """The rungs that do not apply to this plan or device, each once, with why (8-bit AdamW for LoRA, say). A rung
    the table uses is not among them, even where it stops applying later (halve_batch at its floor)."""
    used = {row.rung for row in rows}
    seen: dict[str, str] = {}
    for row in rows:
        for name, why in row.skipped:
            if name not in used:
                seen.setdefault(name, why)
    return "not for this plan: " + "; ".join(f"{n} ({w})" for n, w in seen.items()) if seen else None


def where_line(rows: list[Row]) -> str | None:
    """Where the memory goes in the starting plan: the term the first rungs should act on."""
    said = dominant_text(rows[0].estimate)
    return f"where the memory goes: {said}" if said else None


def to_json(rows: list[Row], capacity: int) -> dict[str, Any]:
    first = next((i for i, r in enumerate(rows) if r.fits), None)
    return {"usable": capacity, "first_fit": first,
            "rows": [{"rung": r.rung, "changes": r.changes, "plan": r.plan.set_fields(), "parts": r.estimate.parts,
                      "split": r.estimate.split, "dominant": (r.estimate.dominant() or (None,))[0],
                      "peak": r.estimate.peak, "fits": r.fits, "passed_over": r.passed_over, "cost": r.cost,
                      "skipped": [list(pair) for pair in r.skipped]} for r in rows]}


def verdict(rows: list[Row], capacity: int) -> str:
    first = next((i for i, r in enumerate(rows) if r.fits), None)
    if first is None:
        return (f"no plan of this ladder is estimated to fit in {format_size(capacity)} usable: shorten the sequences, "
                f"train adapters instead of every weight, or use a bigger device")
    r = rows[first]
    passed = [row.rung for row in rows[:first] if row.passed_over]
    note = f"; passed over: {', '.join(passed)} (would save under a tenth of what is missing)" if passed else ""
    if first == 0:
        return (f"the starting plan is estimated to fit: {format_size(r.estimate.peak)} of {format_size(capacity)} "
                f"usable")
    return (f"first to fit: #{first} ({r.rung}), {format_size(r.estimate.peak)} of {format_size(capacity)} usable; "
            f"after an OOM, oomladder run takes the rungs up to it at once where its calibrated estimate agrees"
            + note)


__all__ = ["Row", "render", "to_json", "usable", "verdict", "skipped_line", "walk", "weights_line",
           "where_line"]
