"""The journal is the single source of truth: append-only, versioned, readable after a crash."""

import json

from oomladder.plan import Plan
from oomladder.record.history import fold
from oomladder.record.journal import SCHEMA_VERSION, Journal, read_journal


def test_each_record_is_a_versioned_line_on_disk_as_soon_as_it_is_appended(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl", clock=lambda: 100.0)
    journal.append("run_started", command=["python", "train.py"])
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()  # not closed: flushed already
    assert json.loads(lines[0]) == {"v": SCHEMA_VERSION, "type": "run_started", "ts": 100.0,
                                    "command": ["python", "train.py"]}


def test_a_line_cut_off_by_a_crash_is_skipped_and_the_journal_goes_on(tmp_path):
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        journal.append("run_started", command=["x"])
    with open(path, "a") as f:
        f.write('{"v": 1, "type": "progress", "attem')  # the crash
    assert [r["type"] for r in read_journal(path)] == ["run_started"]
    with Journal(path) as journal:
        assert len(journal.records) == 1
        journal.append("run_ended", status="finished")
    assert [r["type"] for r in read_journal(path)] == ["run_started", "run_ended"]


def test_the_view_folds_attempts_plans_progress_and_decisions():
    records = [
        {"type": "run_started", "ts": 0, "command": ["python", "t.py"]},
        {"type": "observed", "ts": 0, "attempt": 0, "plan": {"allocator": ""}},
        {"type": "attempt_started", "ts": 1, "attempt": 1, "rung": None, "plan": {}},
        {"type": "observed", "ts": 2, "attempt": 1, "plan": {"per_device_train_batch_size": 16,
                                                             "gradient_accumulation_steps": 1},
         "facts": {"device": "cpu", "base_frozen": True}},
        {"type": "progress", "ts": 3, "attempt": 1, "step": 2, "max_steps": 6, "loss": 9.5, "peak": 10},
        {"type": "attempt_ended", "ts": 4, "attempt": 1, "outcome": "failed", "exit_code": 1,
         "failure": {"kind": "cpu_oom", "memory": "device", "summary": "CPU allocator out of memory", "step": 2}},
        {"type": "decision", "ts": 4, "attempt": 1, "rung": "halve_batch", "rung_index": 3,
         "plan": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}},
        {"type": "attempt_started", "ts": 5, "attempt": 2, "rung": "halve_batch",
         "plan": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}},
    ]
    view = fold(records)
    first, second = view.attempts
    assert (first.status, first.step, first.max_steps, first.loss, first.failure.kind.value) == (
        "failed", 2, 6, 9.5, "cpu_oom")
    assert first.plan.per_device_train_batch_size == 16
    assert second.plan == Plan(per_device_train_batch_size=8, gradient_accumulation_steps=2, allocator="")
    assert view.program_plan.effective_batch == second.plan.effective_batch == 16
    assert view.facts.base_frozen is True
    assert view.rung_uses == {3: 1}
    assert second.status == "running" and view.status == "running"


def test_a_damaged_line_in_the_middle_is_named_and_a_cut_last_line_is_not(tmp_path):
    from oomladder.record.journal import fold_journal
    from oomladder.views.report import build_report, render_markdown
    path = tmp_path / "journal.jsonl"
    path.write_text('{"v": 1, "type": "run_started", "ts": 1, "command": ["x"]}\n'
                    'garbage from a bad disk\n'
                    '{"v": 1, "type": "attempt_started", "ts": 2}\n'   # an attempt with no number
                    '{"v": 1, "type": "attempt_started", "ts": 3, "attempt": 1, "plan": {}}\n'
                    '{"v": 1, "type": "progress", "ts": 4, "attem')
    view = fold_journal(path)
    assert view.skipped_lines == [2] and view.malformed == 1 and [a.number for a in view.attempts] == [1]
    md = render_markdown(build_report(view))
    assert "**The journal is damaged**: lines that are not records: 2; records that could not be read: 1" in md


def test_a_long_journal_is_kept_as_its_fold_not_as_its_progress_records(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl", clock=lambda: 1.0)
    journal.append("run_started", command=["x"])
    journal.append("attempt_started", attempt=1, plan={})
    journal.extend("progress", [{"attempt": 1, "step": s, "executed": True} for s in range(1, 1001)])
    assert journal.count == 1002 and len(journal.records) == 2
    assert journal.view().attempts[0].steps_run == (1, 1000)
    again = Journal(tmp_path / "journal.jsonl")
    assert again.count == 1002 and again.view().attempts[0].steps == list(range(1, 1001))
