"""The fallback report: what each attempt ran with, what killed it, what the ladder changed and
why, the before/after table of the seed note, and how to run the final plan without oomladder.

`build_report` folds a `RunView` into plain data (report.json, documented by report.schema.json);
the Markdown, HTML (page.py) and console renderings are views of that data only, so `oomladder
report` shows what the run wrote.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

from oomladder.cost import Cost, slowdown, slowdown_cell
from oomladder.plan import Plan, changes, describe_changes
from oomladder.record.history import RunView
from oomladder.units import format_size, format_steps
from oomladder.views.page import render_html
from oomladder.views.reproduce import reproduce
from oomladder.views.table import format_duration, in_place_line, in_place_rows, status_text, steps_text

# report.schema.json (beside this file, shipped with the package) documents the data. 2: each attempt's
# step log and wall-clock times for report.html's charts, the device's memory, the time lost. 3: each attempt's
# OOMs met in place (`in_place`).
REPORT_SCHEMA = 3
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")
STATUS_TEXT = {
    "finished": "Training finished.",
    "ladder_exhausted": "Stopped: out of memory, and no rung of the ladder was left to try.",
    "budget_exhausted": "Stopped: a budget (--max-attempts or --max-wall-time) ran out.",
    "hang": "Stopped: the worker hung, and hung again on the retry.",
    "transient": "Stopped: the same infrastructure failure kept coming back after the retries.",
    "not_memory": "Stopped: the worker failed for a reason no memory setting fixes.",
    "interrupted": "Stopped: interrupted.",
    "launch_failed": "Stopped: the command could not be started.",
    "node_lost": "Stopped: another node's supervisor went silent.",
    "nodes_disagree": "Stopped: the nodes' supervisors disagreed about the run.",
    "disk_full": "Stopped: the disk holding the run directory is full.",
    "internal_error": "Stopped: oomladder itself failed (the journal keeps the error).",
    "running": "Still running (or the supervisor died): `oomladder report` shows the journal as it stands.",
}


def build_report(view: RunView) -> dict[str, Any]:
    attempts, previous, told = [], None, set()
    decisions = {d["attempt"]: d for d in view.decisions}
    for a in view.attempts:
        led_here = decisions.get(a.number - 1, {})
        attempts.append({
            "number": a.number, "rung": a.rung or "start", "reason": a.reason,
            "changes": describe_changes(previous, a.plan) if previous else "-",
            "plan": a.plan.to_dict(), "status": a.status, "status_text": status_text(a),
            "failure": a.failure.to_dict() if a.failure else None,
            "step": a.step, "max_steps": a.max_steps, "peak": a.peak, "peak_measure": a.peak_measure,
            "resumed_from_step": a.resumed_from, "steps_run": list(a.steps_run) if a.steps_run else None,
            "steps_text": steps_text(a), "steps_executed": a.steps if a.reports_steps else None,
            "began_at_step": a.began_at, "ran_again": a.ran_again, "resume_missed": a.resume_missed,
            "rolled_back": a.rolled_back, "in_place": in_place_rows(a),
            "duration": a.duration(), "exit_code": a.exit_code, "command": a.command,
            "skipped": _untold(led_here.get("skipped", []), told),
            "started_at": a.started, "ended_at": a.ended, "training_began_at": a.training_began,
            "step_log": [{"step": step, "at": at, "peak": a.step_peaks.get(step)}
                         for step, at in sorted(a.step_times.items())],
        })
        previous = a.plan
    before, after = view.program_plan, view.final_plan
    ended = view.ended or {}
    steps = {"reported": view.step_counts is not None, "repeated": view.repeated_steps, "missing": view.missing_steps}
    return {
        "schema": REPORT_SCHEMA,
        "status": view.status, "status_text": STATUS_TEXT.get(view.status, view.status),
        "exit_code": ended.get("exit_code"), "reason": ended.get("reason"),
        "command": view.run.get("command", []), "memory_cap": view.run.get("memory_cap"),
        "trains_in": view.facts.trains_in, "notebook": view.facts.notebook,
        "device_memory": view.facts.device_memory,
        "ladder": (view.run.get("ladder") or {}).get("source"),
        "effective_batch": {"before": before.effective_batch, "after": after.effective_batch},
        "steps": steps, "steps_summary": _steps_line(steps, strong=lambda text: text),
        "warnings": [{"attempt": w.get("attempt"), "about": w.get("about"), "text": w.get("text")}
                     for w in view.warnings],
        "journal": {"unreadable_lines": view.skipped_lines, "malformed_records": view.malformed},
        "attempts": attempts,
        "time_lost": time_lost(attempts),
        "before_after": [{"setting": name, "before": old, "after": new} for name, old, new in changes(before, after)],
        "final_plan": after.to_dict(),
        "expected_slowdown": expected_slowdown(view, before, after),
        "reproduce": reproduce(before, after, view.attempts[-1].command if view.attempts else [],
                               view.run.get("command"), view.facts.reads_flags),
    }


def expected_slowdown(view: RunView, before: Plan, after: Plan) -> dict[str, Any] | None:
    """What the final plan is expected to cost in speed against the program's own settings, from the costs the
    strategies stated and the run journaled with its ladder (None for a journal written before they were)."""
    costs = [(r.get("name", "?"), Cost.from_dict(r.get("cost"))) for r in (view.run.get("ladder") or {}).get("rungs", [])]
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
        if a["status"] == "failed" and a["ended_at"] is not None:
            last = (a["step_log"][-1]["at"] if a["step_log"] else a["training_began_at"] if a["training_began_at"]
                    is not None else a["started_at"])
            failures += max(0.0, a["ended_at"] - last)
        previous_end = a["ended_at"]
    return {"failures": round(failures, 3), "restarts": round(restarts, 3)}


def _untold(skipped: list[list[str]], told: set[tuple[str, str]]) -> list[dict[str, str]]:
    """Skips not yet reported: a rung skips for the same reason on every later walk of the ladder."""
    fresh = [{"rung": rung, "reason": why} for rung, why in skipped if (rung, why) not in told]
    told.update((rung, why) for rung, why in skipped)
    return fresh


def render_markdown(report: dict[str, Any]) -> str:
    out = ["# oomladder report", "", f"**{STATUS_TEXT.get(report['status'], report['status'])}**"]
    if report.get("reason"):
        out += ["", _md(report["reason"])]
    eb = report["effective_batch"]
    out += ["", f"- command: `{_code(shlex.join(report['command']))}`"]
    if report.get("notebook"):
        out.append(f"- notebook: `{_code(report['notebook'])}`")
    if report.get("trains_in"):
        out.append(f"- trained in: `{_code(report['trains_in'])}`, which the command started")
    out += [f"- memory cap: {format_size(report['memory_cap']) if report['memory_cap'] else 'none'}",
            f"- ladder: {_md(report['ladder'] or '-')}",
            f"- effective batch: {eb['before']} at the start, {eb['after']} at the end",
            f"- optimizer steps: {_steps_line(report['steps'])}", "",
            "## Attempts", "", "| # | rung | what changed | status | steps run | peak | time |",
            "|---|---|---|---|---|---|---|"]
    for a in report["attempts"]:
        out.append(f"| {a['number']} | {_md(a['rung'])} | {_md(a['changes'])} | {_md(a['status_text'])} | "
                   f"{_md(a['steps_text'])} | {format_size(a['peak'])} | {format_duration(a['duration'])} |")
        for row in a.get("in_place") or ():
            out.append(f"|  | {_md(row['rung'])} | {_md(row['changes'])} | {_md(row['status_text'])} | - | "
                       f"{format_size(row['peak'])} | {format_duration(row['seconds'])} |")
    damaged = report.get("journal") or {}
    if damaged.get("unreadable_lines") or damaged.get("malformed_records"):
        lines = ", ".join(map(str, damaged["unreadable_lines"][:20]))
        out += ["", f"**The journal is damaged**: lines that are not records: {lines or 'none'}; records that could "
                    f"not be read: {damaged['malformed_records']}. The report shows the rest."]
    if report.get("warnings"):
        out += ["", "## Warnings", ""] + [f"- {_md(w['text'])}" for w in report["warnings"]]
    out += ["", "### Why each rung was taken", ""]
    for a in report["attempts"]:
        line = f"- **{a['number']}. {_md(a['rung'])}**: {_md(a['reason'] or 'the program as it was given')}"
        if a["resume_missed"]:
            line += f"; **did not resume**: {_md(a['resume_missed'])}"
        elif a["resumed_from_step"]:
            line += f"; resumed from the end of step {a['resumed_from_step']}"
        if a["skipped"]:
            line += "; skipped: " + "; ".join(f"{_md(s['rung'])} ({_md(s['reason'])})" for s in a["skipped"])
        out.append(line)
        for row in a.get("in_place") or ():
            out.append(f"  - {_md(in_place_line(row))}")
        failure = a["failure"]
        if failure:
            numbers = ", ".join(f"{k.replace('_', ' ')} {format_size(v)}" for k, v in failure["numbers"].items()
                                if k != "tried_to_allocate")  # the summary says it already
            out.append(f"  - died: {_md(failure['kind'])}, {_md(failure['summary'])}" + (f" ({numbers})" if numbers else "")
                       + (": the error came with this attempt's rung, which was rolled back; your program is not "
                          "at fault" if a["rolled_back"] else ""))
    if report["before_after"]:
        out += ["", "## Final plan", "", "| setting | before | after |", "|---|---|---|"]
        for row in report["before_after"]:
            out.append(f"| {row['setting']} | {_md(str(row['before']))} | **{_md(str(row['after']))}** |")
        cost = report.get("expected_slowdown")
        if cost:
            out.append(f"| expected time per step | the program's own | **{_md(slowdown_cell(cost))}** |")
            out += ["", f"Expected cost of the final plan: {_md(cost['text'])}. These are rules of thumb for a busy "
                        f"GPU, not measured in this run."]
        out += _reproduce_md(report["reproduce"])
    return "\n".join(out) + "\n"


def _steps_line(steps: dict[str, Any], strong=lambda text: f"**{text}**") -> str:
    if not steps["reported"]:
        return "not reported by the program (no adapter reached it), so repeats cannot be counted"
    parts = []
    if steps["repeated"]:
        parts.append(strong(f"{format_steps(steps['repeated'])} ran more than once") + " (lost work)")
    if steps["missing"]:
        parts.append(strong(f"{format_steps(steps['missing'])} never reported"))
    return "; ".join(parts) or "each ran once, as the workers reported"


def _reproduce_md(r: dict[str, Any]) -> list[str]:
    out = ["", "## Run the final plan without oomladder", ""]
    if r["training_arguments"]:
        body = ", ".join(f"{k}={v!r}" for k, v in r["training_arguments"].items())
        out += ["In `TrainingArguments(...)`:", "", "```python", f"TrainingArguments(..., {body})", "```", ""]
        out += ["or, for a script that reads them from the command line (HfArgumentParser):", "",
                "```", _code(r["hf_argument_flags"]), "```", ""]
    if r["from_pretrained"]:
        body = ", ".join(f"{k}={v}" for k, v in r["from_pretrained"].items())
        out += ["In `from_pretrained(...)`:", "", "```python", f"from_pretrained(..., {body})", "```", ""]
    if r["command"]:
        out += [f"{_md(r.get('command_note') or 'The command of the last attempt')}:", "", "```", _code(r["command"]),
                "```"]
    return out


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


def _md(text: str) -> str:
    """Text from workers and users, made inert in a Markdown table: no HTML, no column breaks."""
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\n", " ").replace("`", "\\`"))


def _code(text: str) -> str:
    return text.replace("```", "'''")
