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
