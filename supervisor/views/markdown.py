"""report.md: the report's data (report.py's `build_report`) as Markdown.

Every value is escaped (`_md`) or fenced (`_inline_code`, `_fenced`): a command argument, a status or a reason
from the journal is text, never a live tag, a link, or a way out of its code span or table cell.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from oomladder.cost import slowdown_cell
from oomladder.units import format_size
from oomladder.views.table import format_duration
from oomladder.views.words import STATUS_TEXT, journal_damage, split_ahead_line, steps_line, why_taken


def render_markdown(report: dict[str, Any]) -> str:
    """report.md. Every value is escaped (`_md`) or fenced (`_inline_code`, `_fenced`): a command argument, a
    status or a reason from the journal is text, never a live tag or a way out of its code span."""
    status = report["status"]
    out = ["# oomladder report", "", f"**{STATUS_TEXT[status] if status in STATUS_TEXT else _md(status)}**"]
    if report.get("reason"):
        out += ["", _md(report["reason"])]
    eb = report["effective_batch"]
    out += ["", f"- command: {_inline_code(_joined(report['command']))}"]
    if report.get("notebook"):
        out.append(f"- notebook: {_inline_code(str(report['notebook']))}")
    if report.get("trains_in"):
        out.append(f"- trained in: {_inline_code(str(report['trains_in']))}, which the command started")
    out += [f"- memory cap: {_md(_size(report['memory_cap'])) if report['memory_cap'] else 'none'}",
            f"- ladder: {_md(report['ladder'] or '-')}",
            f"- effective batch: {_md(eb['before'])} at the start, {_md(eb['after'])} at the end",
            f"- optimizer steps: {steps_line(report['steps'], strong=lambda text: f'**{_md(text)}**')}",
            *([f"- split ahead: {_md(line)}"] if (line := split_ahead_line(report.get("split_ahead"))) else []), "",
            "## Attempts", "", "| # | rung | what changed | status | steps run | peak | time |",
            "|---|---|---|---|---|---|---|"]
    for a in report["attempts"]:
        out.append(f"| {_md(a['number'])} | {_md(a['rung'])} | {_md(a['changes'])} | {_md(a['status_text'])} | "
                   f"{_md(a['steps_text'])} | {_md(_size(a['peak']))} | {_md(_duration(a['duration']))} |")
        for row in a.get("in_place") or ():
            out.append(f"|  | {_md(row['rung'])} | {_md(row['changes'])} | {_md(row['status_text'])} | - | "
                       f"{_md(_size(row['peak']))} | {_md(_duration(row['seconds']))} |")
    if (damage := journal_damage(report.get("journal") or {})) is not None:
        out += ["", f"**The journal is damaged**: {_md(damage)}. The report shows the rest."]
    if report.get("warnings"):
        out += ["", "## Warnings", ""] + [f"- {_md(w['text'])}" for w in report["warnings"]]
    out += ["", "### Why each rung was taken", ""]
    for a in report["attempts"]:
        out += _why_taken(a)
    if report["before_after"]:
        out += ["", "## Final plan", "", "| setting | before | after |", "|---|---|---|"]
        for row in report["before_after"]:
            out.append(f"| {_md(row['setting'])} | {_md(row['before'])} | **{_md(row['after'])}** |")
        cost = report.get("expected_slowdown")
        if cost:
            out.append(f"| expected time per step | the program's own | **{_md(slowdown_cell(cost))}** |")
            out += ["", f"Expected cost of the final plan: {_md(cost['text'])}. These are rules of thumb for a busy "
                        f"GPU, not measured in this run."]
        out += _reproduce_md(report["reproduce"])
    return "\n".join(out) + "\n"



def _why_taken(a: dict[str, Any]) -> list[str]:
    """An attempt's line under "Why each rung was taken", with its in-place recoveries and how it died."""
    line, in_place, died = why_taken(a, _md, lambda text: f"**{text}**")
    return [f"- {line}"] + [f"  - {row}" for row in in_place] + ([f"  - {died}"] if died else [])


def _reproduce_md(r: dict[str, Any]) -> list[str]:
    out = ["", "## Run the final plan without oomladder", ""]
    if r["training_arguments"]:
        body = ", ".join(f"{k}={v!r}" for k, v in r["training_arguments"].items())
        out += ["In `TrainingArguments(...)`:", "", *_fenced(f"TrainingArguments(..., {body})", "python"), ""]
        out += ["or, for a script that reads them from the command line (HfArgumentParser):", "",
                *_fenced(r["hf_argument_flags"]), ""]
    if r["from_pretrained"]:
        body = ", ".join(f"{k}={v}" for k, v in r["from_pretrained"].items())
        out += ["In `from_pretrained(...)`:", "", *_fenced(f"from_pretrained(..., {body})", "python"), ""]
    if r["command"]:
        out += [f"{_md(r.get('command_note') or 'The command of the last attempt')}:", "", *_fenced(r["command"])]
    return out


def _md(value: Any) -> str:
    """Text from workers, users and the journal, made inert in Markdown: no HTML, no link or image, no column
    break, no code span, one line."""
    text = " ".join(str(value).splitlines())
    return re.sub(r"([\\`\[\]|<>])", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), text)


_ESCAPES = {"<": "&lt;", ">": "&gt;"}  # as entities: some renderers pass a backslash-escaped `<` through as HTML


def _inline_code(text: str) -> str:
    """`text` as one inline code span whose fence is longer than any run of backticks inside it (CommonMark),
    so no backtick in it can end the span."""
    text = " ".join(str(text).splitlines())
    fence = "`" * (max(map(len, re.findall(r"`+", text)), default=0) + 1)
    # A space on both sides only where a backtick would touch the fence (CommonMark strips one from each side).
    pad = " " if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _fenced(text: str, info: str = "") -> list[str]:
    """`text` as a fenced code block whose fence is longer than any run of backticks inside it."""
    fence = "`" * max(3, max(map(len, re.findall(r"`+", str(text))), default=0) + 1)
    return [fence + info, str(text), fence]


def _joined(command: Any) -> str:
    try:
        return shlex.join(str(part) for part in command)
    except TypeError:
        return str(command)


def _size(value: Any) -> str:
    try:
        return format_size(value)
    except (TypeError, ValueError, OverflowError):
        return str(value)


def _duration(value: Any) -> str:
    try:
        return format_duration(value)
    except (TypeError, ValueError, OverflowError):
        return str(value)
