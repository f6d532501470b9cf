"""The fallback report: what each attempt ran with, what killed it, what the ladder changed and
why, the before/after table of the seed note, and how to run the final plan without oomladder.

`build_report` folds a `RunView` into plain data (report.json, documented by report.schema.json);
the Markdown (markdown.py), HTML (html.py) and console (console.py) renderings are views of that data
only, so `oomladder report` shows what the run wrote.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from oomladder.cost import Cost, slowdown
from oomladder.plan import Plan, changes, describe_changes
from oomladder.record.history import RunView
from oomladder.record.view import AttemptView
from oomladder.status import AttemptOutcome
from oomladder.views.html import render_html
from oomladder.views.markdown import render_markdown
from oomladder.views.reproduce import reproduce
from oomladder.views.table import in_place_rows, status_text, steps_text
from oomladder.views.words import STATUS_TEXT, steps_line

# report.schema.json (beside this file, shipped with the package) documents the data. 2: each attempt's
# step log and wall-clock times for report.html's charts, the device's memory, the time lost. 3: each attempt's
# OOMs met in place (`in_place`). 4: step sets as ranges [first, last], not every step.
REPORT_SCHEMA = 4
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")


def build_report(view: RunView) -> dict[str, Any]:
    attempts: list[dict[str, Any]] = []
    previous: Any = None
    told: set[Any] = set()
    decisions = {d.attempt: d for d in view.decisions}
    for a in view.attempts:
        led_here = decisions.get(a.number - 1)
        attempts.append({
            "number": a.number, "rung": a.rung or "start", "reason": a.reason,
            "changes": describe_changes(previous, a.plan) if previous else "-",
            "plan": a.plan.to_dict(), "status": a.status, "status_text": status_text(a),
            "failure": a.failure.to_dict() if a.failure else None,
            "step": a.step, "max_steps": a.max_steps, "peak": a.peak, "peak_measure": a.peak_measure,
            "resumed_from_step": a.resumed_from, "steps_run": list(a.steps_run) if a.steps_run else None,
            "steps_text": steps_text(a), "steps_executed": a.steps.to_json() if a.reports_steps else None,
            "began_at_step": a.began_at, "ran_again": a.ran_again.to_json(), "resume_missed": a.resume_missed,
            "rolled_back": a.rolled_back, "in_place": in_place_rows(a), "split_ahead": split_ahead([a]),
            "duration": a.duration(), "exit_code": a.exit_code, "command": a.command,
            "skipped": _untold(led_here.skipped if led_here else (), told),
            "started_at": a.started, "ended_at": a.ended, "training_began_at": a.training_began,
            "step_log": [{"step": step, "at": at, "peak": a.step_peaks.get(step)}
                         for step, at in sorted(a.step_times.items())],
        })
        previous = a.plan
    before, after = view.program_plan, view.final_plan
    ended = view.ended
    exact = view.steps_exact
    steps = {"reported": view.steps_reported, "repeated": view.repeated_steps.to_json(),
             "missing": view.missing_steps.to_json() if exact else [], "exact": exact}
    return {
        "schema": REPORT_SCHEMA,
        "status": view.status, "status_text": STATUS_TEXT.get(view.status, view.status),
        "exit_code": ended.exit_code if ended else None, "reason": ended.reason if ended else None,
        "command": view.run.get("command") or [], "memory_cap": view.run.get("memory_cap"),
        "trains_in": view.facts.trains_in, "notebook": view.facts.notebook,
        "device_memory": view.facts.device_memory,
        "ladder": (view.run.get("ladder") or {}).get("source"),
        "effective_batch": {"before": before.effective_batch, "after": after.effective_batch},
        "steps": steps, "steps_summary": steps_line(steps, strong=lambda text: text),
        "warnings": [{"attempt": w.attempt, "about": w.about, "text": w.text} for w in view.warnings],
        "journal": {"unreadable_lines": view.skipped_lines, "malformed_records": view.malformed,
                    "damaged": view.damaged},
        "attempts": attempts,
        "time_lost": time_lost(attempts),
        "split_ahead": split_ahead(view.attempts),
        "before_after": [{"setting": name, "before": old, "after": new} for name, old, new in changes(before, after)],
        "final_plan": after.to_dict(),
        "expected_slowdown": expected_slowdown(view, before, after),
        "reproduce": reproduce(before, after, view.attempts[-1].command if view.attempts else [],
                               view.run.get("command"), view.facts.reads_flags,
                               view.attempts[-1].ahead.widest if view.attempts else 1),
    }


def split_ahead(attempts: list[AttemptView]) -> dict[str, Any] | None:
    """What split ahead did (worker/recovery/ahead.py): the steps it ran split and the widest split, how far each step's
    predicted peak was from the measured one (predicted / measured - 1), and the OOMs it did not foresee."""
    errors: list[float] = [e for a in attempts for e in a.ahead.errors]
    missed = sum(1 for a in attempts for r in a.in_place if r.predicted is not None)
    split = sum(a.ahead.steps_split for a in attempts)
    if not errors and not split and not missed:
        return None
    worst: float | None = max(errors, key=abs) if errors else None
    return {"steps_split": split, "widest": max(a.ahead.widest for a in attempts), "predictions": len(errors),
            "error_median": round(statistics.median(errors), 4) if errors else None,
            "error_worst": round(worst, 4) if worst is not None else None, "mispredictions": missed}


def expected_slowdown(view: RunView, before: Plan, after: Plan) -> dict[str, Any] | None:
    """What the final plan is expected to cost in speed against the program's own settings, from the costs the
    strategies stated and the run journaled with its ladder (None for a journal written before they were)."""
    costs = [(r.get("name") or "?",
              Cost.from_dict(r.get("cost"))) for r in (view.run.get("ladder") or {}).get("rungs") or []]
    known = [(name, cost) for name, cost in costs if cost is not None]
    return slowdown(before, after, known).to_dict() if known else None


def time_lost(attempts: list[dict[str, Any]]) -> dict[str, float]:
    """Wall-clock seconds the out-of-memory errors cost, in two parts.

    failures: what a failed attempt ran after its last whole step (the step that died, the dying, the
    emergency save); from the start of its training when it finished no step, from its own start when its
    workers tell nothing (a program that reports no steps starts over, so all of it was lost).
    restarts: the start-up of each later attempt (launch, imports, model load, resume) until its workers
    began training, and the gaps between attempts. Attempt 1's start-up is the program's own cost.
    """
    failures = restarts = 0.0
    previous_end = None
    for a in attempts:
        if previous_end is not None:
            restarts += max(0.0, a["started_at"] - previous_end)
            if a["training_began_at"] is not None:
                restarts += max(0.0, a["training_began_at"] - a["started_at"])
        if a["status"] == AttemptOutcome.FAILED and a["ended_at"] is not None:
            last = (a["step_log"][-1]["at"] if a["step_log"] else a["training_began_at"] if a["training_began_at"]
                    is not None else a["started_at"])
            failures += max(0.0, a["ended_at"] - last)
        previous_end = a["ended_at"]
    return {"failures": round(failures, 3), "restarts": round(restarts, 3)}


def _untold(skipped: Iterable[tuple[str, str]], told: set[tuple[str, str]]) -> list[dict[str, str]]:
    """Skips not yet reported: a rung skips for the same reason on every later walk of the ladder."""
    fresh = [{"rung": rung, "reason": why} for rung, why in skipped if (rung, why) not in told]
    told.update((rung, why) for rung, why in skipped)
    return fresh




def write_reports(run_dir: str | Path, view: RunView) -> dict[str, Any]:
    report = build_report(view)
    run_dir = Path(run_dir)
    _atomic_write(run_dir / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    _atomic_write(run_dir / "report.md", render_markdown(report))
    _atomic_write(run_dir / "report.html", render_html(report))  # last: its charts take the longest
    return report


def _atomic_write(path: Path, text: str) -> None:
    """A temporary file of its own in the run directory (never a name someone could have planted a link at),
    synced, then renamed over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
