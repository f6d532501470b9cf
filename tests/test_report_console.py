"""The table and the report, rendered to a capture console of fixed width with colour off."""

import json

from rich.console import Console

from oomladder.record.history import fold
from oomladder.views.console import print_report
from oomladder.views.report import build_report, render_markdown
from oomladder.views.table import attempts_table

RECORDS = [
    {"type": "run_started", "ts": 0, "command": ["python", "train.py", "--bs", "16"], "memory_cap": 1200 * 2**20,
     "ladder": {"source": "default ladder (default.yaml)"}},
    {"type": "observed", "ts": 0, "attempt": 1, "plan": {
        "per_device_train_batch_size": 16, "gradient_accumulation_steps": 1, "precision": "bf16",
        "quantization": "none", "gradient_checkpointing": False}, "facts": {"device": "cpu"}},
    {"type": "attempt_started", "ts": 0, "attempt": 1, "rung": None, "plan": {}, "command": ["python", "train.py"]},
    {"type": "progress", "ts": 5, "attempt": 1, "step": 2, "max_steps": 6, "peak": 900 * 2**20},
    {"type": "attempt_ended", "ts": 10, "attempt": 1, "outcome": "failed", "exit_code": 1, "failure": {
        "kind": "cpu_oom", "memory": "device", "summary": "CPU allocator out of memory: tried to allocate 500 MiB",
        "step": 2, "phase": "train", "numbers": {"tried_to_allocate": 500 * 2**20}}},
    {"type": "decision", "ts": 10, "attempt": 1, "rung": "halve_batch", "rung_index": 3,
     "reason": "half the activations", "skipped": [["bf16", "training already runs in bf16"]],
     "plan": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}},
    {"type": "attempt_started", "ts": 10, "attempt": 2, "rung": "halve_batch", "reason": "half the activations",
     "plan": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2},
     "command": ["python", "train.py", "--note", "a|b<script>"]},
    {"type": "progress", "ts": 40, "attempt": 2, "step": 4, "max_steps": 6, "peak": 700 * 2**20},
]


def render(renderable, width=120):
    console = Console(width=width, color_system=None, force_terminal=False, record=True)
    console.print(renderable)
    return console.export_text()


def test_the_live_table_has_a_row_per_attempt():
    text = render(attempts_table(fold(RECORDS), now=70))
    assert "│ 1 │ start       │ the program's own settings" in text
    assert "OOM in step 3/6" in text
    assert "│ 2 │ halve_batch │ per_device_train_batch_size 16→8" in text
    assert "│   │             │ gradient_accumulation_steps 1→2" in text
    assert "running at step 4/6" in text
    assert "700 MiB" in text and "1:00" in text


def test_the_report_tells_the_story_and_how_to_reproduce_the_final_plan():
    records = RECORDS + [
        {"type": "attempt_ended", "ts": 70, "attempt": 2, "outcome": "finished", "exit_code": 0, "step": 6},
        {"type": "run_ended", "ts": 70, "status": "finished", "exit_code": 0, "reason": "every step ran"}]
    report = build_report(fold(records))
    assert report["effective_batch"] == {"before": 16, "after": 16}
    assert report["attempts"][1]["skipped"] == [{"rung": "bf16", "reason": "training already runs in bf16"}]
    assert report["reproduce"]["training_arguments"] == {"per_device_train_batch_size": 8,
                                                         "gradient_accumulation_steps": 2}
    assert report["reproduce"]["hf_argument_flags"] == "--per_device_train_batch_size 8 --gradient_accumulation_steps 2"
    md = render_markdown(report)
    assert "**Training finished.**" in md
    assert "| per_device_train_batch_size | 16 | **8** |" in md
    assert "a\\|b&lt;script&gt;" not in md  # commands stay in code spans; table cells are escaped
    json.dumps(report)


def test_text_from_workers_cannot_break_the_markdown_table():
    records = RECORDS[:4] + [{"type": "attempt_ended", "ts": 10, "attempt": 1, "outcome": "failed", "failure": {
        "kind": "error", "memory": None, "summary": "ValueError: bad | <img src=x>", "step": 0}}]
    md = render_markdown(build_report(fold(records)))
    assert "bad \\| &lt;img src=x&gt;" in md and "<img" not in md


def test_the_console_report_shows_the_ladder():
    console = Console(width=140, color_system=None, record=True)
    view = fold(RECORDS)
    print_report(console, view, build_report(view))
    text = console.export_text()
    assert "Attempts" in text and "halve_batch" in text and "skipped: bf16 (training already runs in bf16)" in text
    assert "Final plan" in text
