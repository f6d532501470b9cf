"""Any JSON in any field of any journal record is either rendered or named as damaged, in every view: the fold,
report.json (checked against its schema), report.md (no live tag, by a CommonMark parser), report.html (no
live tag), the console's tables and bars, and the notifications' text. Never a traceback.

Hypothesis starts from a whole journal of every record type and puts odd values (arbitrary JSON, and the
values a hostile night tried: a step of 2.5, NaN or 1e12, an attempt of "2", a time of "yesterday" or
Infinity, a status of ["x"], a tag in a string) into its fields, or lines that are not records at all.
PROPERTY_EXAMPLES=1500 runs more examples than CI's (1,500 passed when these tests were written).
"""

import json
import math
import os
import time
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from rich.console import Console

from oomladder.record import schema
from oomladder.record.checks import damage
from oomladder.record.journal import fold_journal
from oomladder.status import RunStatus
from oomladder.views.bars import peak_bars, running_progress
from oomladder.views.console import print_report
from oomladder.views.html import render_html
from oomladder.views.messages import end_message, fallback_message
from oomladder.views.report import SCHEMA_FILE, build_report, render_markdown
from oomladder.views.table import attempts_table

TAG = "<img src=x onerror=alert(1)>"
PLAN = {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1, "precision": "fp32"}
FAILURE = {"kind": "cpu_oom", "memory": "device", "summary": "CPU allocator out of memory", "phase": "train",
           "step": 2, "numbers": {"tried_to_allocate": 1024}, "rank": 0}
JOURNAL = [
    {"type": "run_started", "ts": 100.0, "command": ["python", "train.py", "--lr", "1e-3"], "memory_cap": 2**30,
     "ladder": {"source": "default", "rungs": [{"name": "halve_batch", "cost": {"says": "slower"}}]},
     "max_attempts": 10, "cwd": "/w", "version": "0.1.0", "initial": {}, "notify_targets": ["json://h.example.com"]},
    {"type": "observed", "ts": 100.5, "attempt": 0, "source": "environment", "plan": {"allocator": ""}, "facts": {}},
    {"type": "attempt_started", "ts": 101.0, "attempt": 1, "rung": None, "reason": "", "plan": {},
     "command": ["python", "train.py"], "attempt_dir": "/r/attempts/001", "resume_from": None},
    {"type": "observed", "ts": 102.0, "attempt": 1, "rank": 0, "plan": PLAN, "facts": {"device": "cpu"},
     "memory_cap": {"mode": "cpu_address_space"}, "model": {"params": 10}},
    {"type": "progress", "ts": 103.0, "attempt": 1, "rank": 0, "began_at": 0, "max_steps": None},
    {"type": "progress", "ts": 104.0, "attempt": 1, "rank": 0, "step": 1, "max_steps": 6, "loss": 2.5,
     "learning_rate": 0.001, "phase": "train", "peak": 900, "peak_measure": "rss", "batch_shape": [16, 32],
     "executed": True},
    {"type": "progress", "ts": 105.0, "attempt": 1, "rank": 0, "steps": [[2, 2]], "step": 2, "executed": True,
     "summed": 1, "peak": 950},
    {"type": "in_place", "ts": 105.5, "attempt": 1, "rank": 0, "step": 2, "outcome": "split", "split": 2,
     "split_before": 1, "rows": 16, "ooms": 1, "seconds": 1.5, "oom": {"peak": 990}, "numbers": {"tried": 5}},
    {"type": "checkpoint", "ts": 106.0, "attempt": 1, "kind": "emergency", "path": "/r/checkpoints/c", "step": 2},
    {"type": "attempt_ended", "ts": 107.0, "attempt": 1, "outcome": "failed", "exit_code": 1, "duration": 6.0,
     "exited": 107.0, "step": 2, "max_steps": 6, "failure": FAILURE, "peak": 999, "batch_shape": [16, 256]},
    {"type": "decision", "ts": 107.5, "attempt": 1, "rung": "halve_batch", "rung_index": 2, "rung_indices": [2],
     "reason": "halve the batch", "plan": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2},
     "changes": "per_device_train_batch_size 16→8", "skipped": [["bf16", "already bf16"]], "estimate": {}},
    {"type": "warning", "ts": 108.0, "attempt": 1, "about": "stray", "text": "stopped 1 process"},
    {"type": "attempt_started", "ts": 109.0, "attempt": 2, "rung": "halve_batch", "reason": "halve the batch",
     "plan": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}, "command": ["python", "t.py"],
     "resume_from": {"path": "/r/checkpoints/c", "step": 2}},
    {"type": "progress", "ts": 110.0, "attempt": 2, "rank": 0, "began_at": 2},
    {"type": "progress", "ts": 111.0, "attempt": 2, "rank": 0, "step": 3, "executed": True, "peak": 500},
    {"type": "attempt_ended", "ts": 112.0, "attempt": 2, "outcome": "finished", "exit_code": 0, "step": 6},
    {"type": "run_ended", "ts": 113.0, "status": "finished", "exit_code": 0, "reason": "every step ran once"},
]
# What a hostile night put into a journal, and what JSON can hold besides.
ODD = st.sampled_from([2.5, math.nan, math.inf, -math.inf, "2", "yesterday", ["x"], 1e12, 10**12, 10**30, -1,
                       True, None, {}, [], "", TAG, "`a`b` " + TAG, "|", "\n# heading", "[x](javascript:y)",
                       ["python", "`a`b` " + TAG, "```"]])
LEAF = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | ODD
ANY_JSON = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=4), max_leaves=12)
FIELDS = sorted({name for record in JOURNAL for name in record} | {"type", "v", "summed"})
NOT_A_RECORD = st.sampled_from(["[" * 5000 + "]" * 5000, "{" * 3000, '{"type": "progress", "step": 1', "NaN",
                                "[1, 2]", '"just text"', "{}", '{"type": ' + '[' * 2000 + ']' * 2000 + '}'])


@st.composite
def journals(draw):
    """The journal's lines: the whole journal with some fields of some records made odd, and some lines that are
    not records."""
    records = [dict(r) for r in JOURNAL]
    for _ in range(draw(st.integers(1, 4))):
        record = records[draw(st.integers(0, len(records) - 1))]
        field = draw(st.sampled_from(sorted(record)) | st.sampled_from(FIELDS))  # its own fields, mostly
        record[field] = draw(ODD | st.text(max_size=20) | ANY_JSON)
    lines = [json.dumps(r) for r in records]
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), draw(NOT_A_RECORD))
    return records, lines


def fold_lines(tmp_path: Path, lines: list[str]):
    path = tmp_path / "journal.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return fold_journal(path)


def assert_no_live_tag(md: str, page: str) -> None:
    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    kinds = {t.type for t in tokens} | {c.type for t in tokens for c in (t.children or [])}
    assert not kinds & {"html_inline", "html_block", "link_open", "image"}, kinds
    assert "<img src=x" not in page  # in Markdown, text in a code span is inert: the tokens above are the test


SETTINGS = settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", 100)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(journals())
def test_any_json_in_any_field_folds_and_renders_or_is_named_as_damaged(tmp_path, journal):
    records, lines = journal
    view = fold_lines(tmp_path, lines)
    damaged = [r for r in records if damage(r) is not None]
    assert view.malformed >= len(damaged) or view.skipped_lines  # a damaged record is counted, not folded
    report = build_report(view)
    jsonschema.validate(json.loads(json.dumps(report, default=str)), json.loads(SCHEMA_FILE.read_text()))
    md = render_markdown(report)
    assert_no_live_tag(md, "")
    if damaged or view.skipped_lines:
        assert "The journal is damaged" in md
    console = Console(width=120, record=True, color_system=None, file=open("/dev/null", "w"))
    print_report(console, view, report)
    console.print(attempts_table(view, now=200.0))
    for renderable in (running_progress(view, 200.0), peak_bars(view)):
        if renderable is not None:
            console.print(renderable)
    end_message(view, Path("report.html"), "here")
    for a in view.attempts:
        if any(d.attempt == a.number for d in view.decisions):
            fallback_message(view, a.number, "here")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(journals())
def test_any_json_in_any_field_renders_as_an_html_page_without_a_live_tag(tmp_path, journal):
    _records, lines = journal
    report = build_report(fold_lines(tmp_path, lines))
    assert_no_live_tag(render_markdown(report), render_html(report))


@pytest.mark.parametrize("field, value", [("step", 2.5), ("step", math.nan), ("step", 1e12), ("attempt", "2"),
                                          ("ts", "yesterday"), ("status", ["x"]), ("ts", math.inf)])
def test_the_odd_values_of_a_hostile_night_are_named_as_damaged(tmp_path, field, value):
    records = [dict(r) for r in JOURNAL]
    target = next(r for r in records if field in r and r["type"] != "run_started")
    target[field] = value
    view = fold_lines(tmp_path, [json.dumps(r) for r in records])
    assert view.malformed == 1
    assert "could not be read: 1" in render_markdown(build_report(view))


def test_a_step_of_a_trillion_costs_what_step_one_costs(tmp_path):
    records = [dict(r) for r in JOURNAL]
    records[-3] = {**records[-3], "step": 10**12}
    started = time.monotonic()
    report = build_report(fold_lines(tmp_path, [json.dumps(r) for r in records]))
    assert report["steps"]["missing"] == [[3, 10**12 - 1]] and time.monotonic() - started < 5
    assert "3–999999999999 never reported" in render_markdown(report)


def test_a_command_argument_with_a_backtick_stays_in_its_code_span_and_an_unknown_status_is_damage(tmp_path):
    records = [dict(r) for r in JOURNAL]
    records[0]["command"] = ["python", "train.py", "--tag", "x` <img src=x onerror=alert(1)> `y", "```"]
    records[-1]["status"] = "<b>odd</b>"
    md = render_markdown(build_report(fold_lines(tmp_path, [json.dumps(r) for r in records])))
    assert_no_live_tag(md, "")
    code = next(t for t in MarkdownIt("commonmark").parse(md) if t.type == "inline" and "command" in t.content)
    assert [c.content for c in code.children if c.type == "code_inline"] == [
        "python train.py --tag 'x` <img src=x onerror=alert(1)> `y' '```'"]
    # A status nobody writes is damage, named with its line, not a status.
    assert "could not be read: 1 (line 17: status is '&lt;b&gt;odd&lt;/b&gt;')" in md and "**Still running" in md


def test_the_statuses_the_journal_knows_are_the_runs():
    assert set(schema.RUN_STATUSES) == {s.value for s in RunStatus if s.ended}
    assert set(schema.RUN_STATUSES) | {"running", "not started"} == {s.value for s in RunStatus}
