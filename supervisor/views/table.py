"""The attempts table: a pure function from the run's view to a rich `Table` (shown live, and
again in `oomladder report`)."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from oomladder.plan import Plan, describe_changes
from oomladder.record.history import AttemptView, RunView
from oomladder.record.records import InPlaceRecord
from oomladder.status import AttemptOutcome, InPlaceOutcome
from oomladder.units import format_size, format_steps


def attempts_table(view: RunView, now: float | None = None, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("#", justify="right")
    table.add_column("rung")
    table.add_column("what changed")
    table.add_column("status")
    table.add_column("steps run", justify="right")
    table.add_column("peak", justify="right")
    table.add_column("time", justify="right")
    previous: Plan | None = None
    for attempt in view.attempts:
        changed = _changed(view, attempt, previous)
        table.add_row(str(attempt.number), attempt.rung or "start", Text(changed), _status(attempt),
                      steps_text(attempt), format_size(attempt.peak), format_duration(attempt.duration(now)))
        for row in in_place_rows(attempt):  # the same process went on: no number of its own
            table.add_row("", row["rung"], Text(row["changes"]), Text(row["status_text"], style="yellow"), "-",
                          format_size(row["peak"]), format_duration(row["seconds"]))
        previous = attempt.plan
    return table


def _changed(view: RunView, attempt: AttemptView, previous: Plan | None) -> str:
    if previous is None:
        if attempt.rung == "resume":
            return "resumed on the plan reached before:\n" + describe_changes(view.program_plan, attempt.plan, "\n")
        given = attempt.overrides.set_fields()
        return ", ".join(f"{k}={v}" for k, v in given.items()) if given else "the program's own settings"
    return describe_changes(previous, attempt.plan, separator="\n")  # a line each: narrow terminals wrap cleanly


def in_place_rows(attempt: AttemptView) -> list[dict[str, Any]]:
    """A row for each OOM the attempt's worker met in place (worker/recovery/in_place.py): `in place: split 2` and what
    the split equals, or why it went to a relaunch instead."""
    rows = []
    total = f"/{attempt.max_steps}" if attempt.max_steps else ""
    for r in attempt.in_place:
        split, before = r.split, r.split_before
        recovered = r.recovered
        if recovered:
            status = "OOM in step {}{}: recovered in place, no relaunch".format(r.step, total)
            turned = r.turned_on_checkpointing
            changes = describe_changes(attempt.in_place_plan(before, r.checkpointing_before),
                                       attempt.in_place_plan(split, r.checkpointing), "\n")
            if r.per_step:  # split ahead sizes each step: this split was that step's alone
                changes = f"step {r.step} in {split} chunks" + ("\ngradient checkpointing on" if turned else "")
            rung = "in place: " + " + ".join(([f"split {split}"] if split != before or not turned else [])
                                             + (["gradient checkpointing"] if turned else []))
        else:
            status = "OOM in step {}{}: relaunched: {}".format(r.step, total, r.reason or r.outcome)
            failed = r.outcome is InPlaceOutcome.FAILED
            changes, rung = "-", f"in place: {'failed' if failed else 'not possible'}"
        rows.append({"step": r.step, "outcome": r.outcome, "rung": rung, "changes": changes,
                     "checkpointing": recovered and r.turned_on_checkpointing,
                     "status_text": status, "split": split, "rows": r.rows, "ooms": r.ooms,
                     "reason": r.reason, "error": r.error, "numbers": r.numbers or {},
                     "peak": r.peak, "seconds": r.seconds})
    return rows


def in_place_change(record: InPlaceRecord) -> str:
    """What an in-place recovery changed, for the live line: `its micro-batch runs in 2 chunks`."""
    split, turned = record.split, "gradient checkpointing turned on, " if record.turned_on_checkpointing else ""
    if record.per_step:
        return turned + f"that step ran in {split} chunks; later steps are sized as they come"
    return turned + "its micro-batch runs " + (f"in {split} chunks" if split > 1 else "whole")


def in_place_line(row: dict[str, Any]) -> str:
    """Why an OOM was (or was not) met in place, with the numbers of its message."""
    numbers = ", ".join(f"{k.replace('_', ' ')} {format_size(v)}" for k, v in (row.get("numbers") or {}).items())
    oom = f"out of memory in step {row['step']}" + (f" ({numbers})" if numbers else "")
    tries = f" after {row['ooms']} OOMs" if (row.get("ooms") or 1) > 1 else ""
    if row["outcome"] == InPlaceOutcome.SPLIT:
        turned = "gradient checkpointing turned on, " if row.get("checkpointing") else ""
        return (f"in place: {oom}; {turned}the micro-batch of "
                f"{row['rows']} runs in {row['split']} chunk{'s' if row['split'] > 1 else ''}{tries}"
                f"{', its gradients accumulated' if row['split'] > 1 else ''}: the same step, without a new process")
    return f"in place: {oom}; relaunched instead: {row.get('reason') or row['outcome']}"


def status_text(attempt: AttemptView) -> str:
    total = f"/{attempt.max_steps}" if attempt.max_steps else ""
    if attempt.status is AttemptOutcome.RUNNING:
        if attempt.step is None:
            return "starting"
        return f"{'evaluating' if attempt.phase == 'eval' else 'running'} at step {attempt.step}{total}"
    if attempt.status is AttemptOutcome.FINISHED:
        return f"finished{f' at step {attempt.step}{total}' if attempt.step is not None else ''}"
    failure = attempt.failure
    where = ""
    if failure is not None and failure.phase == "load":
        where = " while the model loaded"
    elif failure is not None and failure.step is not None:
        where = (f" in step {failure.step + 1}{total}" if failure.phase != "eval"
                 else f" in evaluation after step {failure.step}")
    elif attempt.step is not None:
        where = f" after step {attempt.step}{total}"
    if failure is None:
        return attempt.status.value + where
    on = f" on rank {failure.rank}" if failure.rank is not None else ""
    if failure.is_memory:
        return f"OOM{where}{on}" + (" (host)" if failure.memory == "host" else "")
    if attempt.rolled_back:
        return f"broken by its rung{where}: {failure.summary} (rolled back)"
    return f"{failure.kind.value.replace('_', ' ')}{where}{on}: {failure.summary}"  # launch_failed: words


def steps_text(attempt: AttemptView) -> str:
    """`3–6 (resumed)`: the optimizer steps the attempt's workers reported running. Each step should
    appear in exactly one row; a step that ran before shows as run again."""
    if attempt.failure is not None and attempt.failure.phase == "load" and not attempt.steps:
        return "none"  # it never began training
    if not attempt.reports_steps and attempt.step is None:
        return "not reported"
    steps = attempt.steps_run
    run = "none" if steps is None else format_steps([steps])
    notes = [f"{format_steps(attempt.ran_again)} again"] if attempt.ran_again else []
    if attempt.resume_missed:
        notes.append("did not resume")
    elif attempt.resumed:
        notes.append("resumed")
    return run + (f" ({'; '.join(notes)})" if notes else "")


def _status(attempt: AttemptView) -> Text:
    style = {AttemptOutcome.FINISHED: "green", AttemptOutcome.RUNNING: "cyan"}.get(attempt.status)
    if attempt.failure is not None:
        style = "yellow" if attempt.failure.is_memory or attempt.rolled_back else "red"
    return Text(status_text(attempt), style=style or "")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
