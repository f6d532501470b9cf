"""The report on a console: the same data as report.md, as rich tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from oomladder.cost import slowdown_cell
from oomladder.record.history import RunView
from oomladder.status import RunStatus
from oomladder.units import format_size
from oomladder.views.table import attempts_table
from oomladder.views.words import STATUS_TEXT, journal_damage


def print_report(console: Console, view: RunView, report: dict[str, Any]) -> None:
    status = STATUS_TEXT.get(report["status"], report["status"])
    console.print(Text(status, style="bold green" if report["status"] == RunStatus.FINISHED else "bold red"))
    if report.get("reason"):
        console.print(Text(report["reason"]))
    eb = report["effective_batch"]
    cap = format_size(report["memory_cap"]) if report["memory_cap"] else "none"
    console.print(Text(f"memory cap: {cap}   ladder: {report['ladder']}   "
                       f"effective batch: {eb['before']} → {eb['after']}"))
    console.print(attempts_table(view, title="Attempts"))
    if (damage := journal_damage(report.get("journal") or {})) is not None:
        console.print(Text(f"The journal is damaged: {damage}. The report shows the rest.", style="bold red"))
    for a in report["attempts"]:
        line = Text(f"{a['number']}. {a['rung']}: ", style="bold")
        line.append(a["reason"] or "the program as it was given")
        if a["skipped"]:
            line.append("; skipped: " + "; ".join(f"{s['rung']} ({s['reason']})" for s in a["skipped"]), style="dim")
        console.print(line)
    if report["before_after"]:
        table = Table(title="Final plan", title_justify="left")
        table.add_column("setting")
        table.add_column("before")
        table.add_column("after", style="bold")
        for row in report["before_after"]:
            table.add_row(row["setting"], str(row["before"]), str(row["after"]))
        cost = report.get("expected_slowdown")
        if cost:
            table.add_row("expected time per step", "the program's own", slowdown_cell(cost))
        console.print(table)
        if cost:
            console.print(Text(f"expected cost: {cost['text']} (rules of thumb, not measured here)"))
        r = report["reproduce"]
        if r["training_arguments"]:
            console.print(Text("TrainingArguments(..., " + ", ".join(
                f"{k}={v!r}" for k, v in r["training_arguments"].items()) + ")"))
        if r["from_pretrained"]:
            console.print(Text("from_pretrained(..., " + ", ".join(
                f"{k}={v}" for k, v in r["from_pretrained"].items()) + ")"))
        if r["command"]:
            console.print(Text("command: " + r["command"]))
