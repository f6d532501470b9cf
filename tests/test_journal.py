"""The journal is the single source of truth: append-only, versioned, readable after a crash."""

import json

import pytest

from oomladder.plan import Plan
from oomladder.record import schema
from oomladder.record.history import Folder, fold
from oomladder.record.journal import SCHEMA_VERSION, Journal, read_journal
from oomladder.record.records import CheckpointRecord, LoadRequest, ModelData, RunEnd, WarningRecord
from oomladder.status import AttemptOutcome, RunStatus


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


# --- the fold, field by field -------------------------------------------------------------------------------

def _run(*records):
    return fold([{"type": "run_started", "ts": 0.0, "command": ["x"]}, *records])


def _started(n, ts=None, **more):
    return {"type": "attempt_started", "ts": float(n) if ts is None else ts, "attempt": n, "plan": {}, **more}


def test_each_attempt_keeps_what_its_workers_reported_the_highest_peak_of_any_rank_and_its_last_values():
    view = _run(_started(1, rung="bf16", reason="bf16 halves the activations", command=["python", "t.py"]),
                {"type": "progress", "ts": 1.5, "attempt": 1, "began_at": 0, "adapter": True},
                {"type": "progress", "ts": 2.0, "attempt": 1, "step": 1, "executed": True, "peak": 700,
                 "batch_shape": [8, 64]},
                {"type": "progress", "ts": 2.1, "attempt": 1, "step": 1, "executed": True, "peak": 900},  # rank 1
                {"type": "progress", "ts": 2.2, "attempt": 1, "step": 1, "loss": 2.5, "learning_rate": 1e-4,
                 "max_steps": 6, "phase": "train", "peak_measure": "cuda"},
                {"type": "progress", "ts": 3.0, "attempt": 1, "step": 2, "executed": True, "peak": 800},
                {"type": "progress", "ts": 3.5, "attempt": 1, "peak": 2000, "phase": "eval"},  # not a step's end
                {"type": "attempt_ended", "ts": 4.0, "attempt": 1, "outcome": "failed", "exit_code": 1, "step": 3,
                 "peak": 2500, "batch_shape": [8, 128]})
    a = view.attempts[0]
    assert (a.rung, a.reason, a.command, a.started, a.adapter, a.training_began) == (
        "bf16", "bf16 halves the activations", ["python", "t.py"], 1.0, True, 1.5)
    assert (a.step_times, a.step_peaks) == ({1: 2.0, 2: 3.0}, {1: 900, 2: 800})
    assert (a.loss, a.learning_rate, a.max_steps, a.phase, a.peak_measure) == (2.5, 1e-4, 6, "eval", "cuda")
    assert (a.step_peak, a.step_batch, a.failed_batch) == (900, [8, 64], [8, 128])
    assert (a.status, a.exit_code, a.ended, a.step, a.peak, a.failure) == ("failed", 1, 4.0, 3, 2500, None)
    assert a.duration() == 3.0 and a.steps_run == (1, 2)


def test_an_attempt_still_running_lasts_until_now_and_one_never_started_is_not_folded():
    view = _run(_started(1, ts=10.0), {"type": "progress", "ts": 11, "attempt": 2, "step": 1},
                {"type": "attempt_ended", "ts": 12, "attempt": 2, "outcome": "failed"})
    a = view.attempts[0]
    assert (a.duration(), a.duration(now=14.5), a.duration(now=9.0)) == (None, 4.5, 0.0)
    assert [x.number for x in view.attempts] == [1] and view.malformed == 0


def test_the_first_report_of_the_model_is_kept_and_the_latest_load_and_the_facts_all_observations_gave():
    view = _run({"type": "observed", "ts": 1, "model": {"shape": {"layers": 2}, "adapters": True},
                 "load": {"path": "a"}, "facts": {"device": "cuda", "bf16_supported": True}},
                {"type": "observed", "ts": 2, "model": {"shape": {"layers": 3}}, "load": None,
                 "facts": {"device": None, "base_frozen": False}},
                {"type": "observed", "ts": 3, "load": {"path": "b"}})
    assert (view.model, view.load) == (ModelData(shape={"layers": 2}, adapters=True), LoadRequest(path="b"))
    assert (view.facts.device, view.facts.bf16_supported, view.facts.base_frozen) == ("cuda", True, False)


def test_checkpoints_warnings_and_the_runs_end_are_kept_and_a_resumed_run_is_running_again():
    checkpoint = {"type": "checkpoint", "ts": 2, "attempt": 1, "path": "/c/2", "step": 2}
    warning = {"type": "warning", "ts": 3, "text": "the disk is nearly full"}
    ended = {"type": "run_ended", "ts": 4, "status": "interrupted"}
    view = _run(_started(1), checkpoint, warning, ended)
    assert (view.checkpoints, view.warnings, view.ended, view.status) == (
        [CheckpointRecord("/c/2", 2, attempt=1)], [WarningRecord("the disk is nearly full", ts=3)],
        RunEnd(RunStatus.INTERRUPTED, ts=4), RunStatus.INTERRUPTED)
    again = fold([{"type": "run_started", "ts": 0.0}, _started(1), ended, {"type": "run_started", "ts": 5.0}])
    assert (again.ended, again.status, again.run["ts"]) == (None, RunStatus.RUNNING, 5.0)
    assert _run().status is RunStatus.NOT_STARTED and _run().final_plan == Plan()


def test_a_rolled_back_attempts_rungs_are_not_counted_as_used_and_a_stacked_decision_counts_each_rung():
    view = _run(_started(1),
                {"type": "decision", "ts": 1, "attempt": 1, "rung_index": 0, "rung_indices": [0, 2]},
                _started(2),
                {"type": "decision", "ts": 2, "attempt": 2, "rung_index": 3, "rolled_back": 2,
                 "incompatible": [["int8", 1, "ValueError: no int8 on this device"]]},
                _started(3),
                {"type": "decision", "ts": 3, "attempt": 3, "rung_index": None},
                {"type": "decision", "ts": 4, "attempt": 4, "rung_index": 0, "rung_indices": [0, 2], "rolled_back": 9})
    assert view.rolled_back == {2, 9} and view.attempts[1].rolled_back and not view.attempts[0].rolled_back
    assert view.incompatible == {1: "ValueError: no int8 on this device"}
    assert view.rung_uses == {3: 1, 0: 1, 2: 1}  # attempt 1's was abandoned with attempt 2's plan


def test_a_journal_from_before_steps_were_reported_counts_from_where_the_attempt_resumed_to_where_it_failed():
    view = _run(_started(1), {"type": "progress", "ts": 1.1, "attempt": 1, "step": 5},
                {"type": "attempt_ended", "ts": 1.2, "attempt": 1, "outcome": "failed",
                 "failure": {"kind": "cpu_oom", "memory": "device", "step": 3}},
                _started(2, resume_from={"path": "c", "step": 1}),
                {"type": "progress", "ts": 2.1, "attempt": 2, "step": 4},
                _started(3), {"type": "attempt_ended", "ts": 3.2, "attempt": 3, "outcome": "failed",
                              "failure": {"kind": "cpu_oom", "memory": "device"}})
    first, second, third = view.attempts
    assert (first.steps, second.steps, third.steps) == ([1, 2, 3], [2, 3, 4], [])
    assert (second.resumed, second.ran_again, first.resumed) == (True, [2, 3], False)
    assert third.steps_run is None and view.repeated_steps == [2, 3] and not view.missing_steps
    assert view.missing_steps == [] and view.repeated_steps == [2, 3]


def test_a_worker_that_reports_its_steps_and_began_where_it_was_asked_did_not_miss_its_resume():
    view = _run(_started(1, resume_from={"path": "c", "step": 2}),
                {"type": "progress", "ts": 1.1, "attempt": 1, "began_at": 2},
                {"type": "progress", "ts": 1.2, "attempt": 1, "began_at": 5})  # only the first one counts
    a = view.attempts[0]
    assert (a.began_at, a.resumed, a.resume_missed, a.reports_steps, a.steps) == (2, True, None, True, [])
    assert _run(_started(1)).attempts[0].resume_missed is None


def test_a_step_reported_twice_by_the_same_attempt_counts_once_and_an_earlier_attempts_step_counts_again():
    executed = {"type": "progress", "attempt": 1, "step": 1, "executed": True}
    view = _run(_started(1), {**executed, "ts": 1.1}, {**executed, "ts": 1.9},
                _started(2), {**executed, "attempt": 2, "ts": 2.1})
    first, second = view.attempts
    assert (first.ran_again, first.step_times, second.ran_again) == ([], {1: 1.1}, [1])
    assert view.repeated_steps == [1]


def test_an_attempt_that_reported_nothing_yet_is_running_with_nothing_known_about_it():
    a = _run(_started(1)).attempts[0]
    unknown = (a.ended, a.failure, a.step, a.max_steps, a.loss, a.learning_rate, a.phase, a.peak, a.peak_measure,
               a.exit_code, a.step_peak, a.step_batch, a.failed_batch, a.began_at, a.resume_failed,
               a.training_began, a.resumed_from)
    assert unknown == (None,) * len(unknown)
    assert (a.status, a.executed, a.ran_again, a.step_times, a.step_peaks, a.rolled_back, a.adapter, a.command,
            a.reason, a.rung) == (AttemptOutcome.RUNNING, set(), [], {}, {}, False, False, [], "", None)
    assert (a.steps, a.steps_run, a.resumed, a.reports_steps) == ([], None, False, False)


def test_an_empty_journal_folds_to_a_run_with_nothing_in_it():
    view = fold([])
    assert (view.run, view.model, view.load, view.ended, view.attempts, view.warnings, view.skipped_lines,
            view.malformed, view.status) == ({}, None, None, None, [], [], [], 0, "not started")


def test_every_record_that_cannot_be_folded_is_counted():
    view = _run({"type": "attempt_started", "ts": 1}, {"type": "attempt_started", "ts": 2, "attempt": 1},
                {"type": "attempt_ended", "ts": 3, "attempt": 1})
    assert view.malformed == 2 and [a.number for a in view.attempts] == [1]


def test_a_record_is_checked_whole_before_it_is_folded_so_what_the_views_read_is_there():
    in_place = {"type": "in_place", "ts": 2, "attempt": 1, "outcome": "split", "split": 2, "seq": 256,
                "tries": [{"rows": 8, "held": 100, "tried": 50, "checkpointing": False}]}
    damaged = [{k: v for k, v in in_place.items() if k != "outcome"},   # what it did: the one thing it says
               {**in_place, "tries": [{"held": 100}]},                     # a try without its chunk's rows
               {**in_place, "checkpointing": "yes"},
               {"type": "observed", "ts": 3, "model": {"trainable_params": "many"}},
               {"type": "checkpoint", "ts": 4, "path": "/c", "step": 2, "adopted_from": "node 1"}]
    view = _run(_started(1), in_place, *damaged)
    assert view.malformed == len(damaged) and view.model is None and view.checkpoints == []
    assert [why["why"] for why in view.damaged] == [
        "no outcome", "tries is [{'held': 100}]", "checkpointing is 'yes'",
        "model is {'trainable_params': 'many'}", "adopted_from is 'node 1'"]
    record, = view.attempts[0].in_place
    assert (record.outcome, record.split, record.tries[0].rows, view.attempts[0].split) == ("split", 2, 8, 2)


def test_a_bug_in_the_fold_itself_is_raised_not_counted_as_a_damaged_record(monkeypatch):
    def forgetful(folder, record):
        return record["a field the fold forgot to check"]
    monkeypatch.setitem(Folder._FOLDS, schema.DECISION, forgetful)
    with pytest.raises(KeyError, match="a field the fold forgot to check"):
        _run(_started(1), {"type": "decision", "ts": 2, "attempt": 1, "rung": "halve_batch"})


def test_a_worker_that_began_after_step_1_resumed_and_steps_before_the_first_it_ran_are_missing():
    view = _run(_started(1, resume_from={"path": "c", "step": 1}),
                {"type": "progress", "ts": 1.1, "attempt": 1, "began_at": 1},
                *({"type": "progress", "ts": 1.2, "attempt": 1, "step": s, "executed": True} for s in (2, 4)))
    assert view.attempts[0].resumed and view.missing_steps == [1, 3]


def test_an_attempts_end_gives_what_its_progress_never_did():
    view = _run(_started(1), {"type": "attempt_ended", "ts": 2, "attempt": 1, "outcome": "failed", "step": 3,
                              "max_steps": 6, "peak": 500, "peak_measure": "rss"})
    a = view.attempts[0]
    assert (a.step, a.max_steps, a.peak, a.peak_measure) == (3, 6, 500, "rss")


def test_a_peak_of_zero_bytes_is_kept_as_zero():
    view = _run(_started(1), {"type": "progress", "ts": 1.1, "attempt": 1, "step": 1, "executed": True, "peak": 0})
    a = view.attempts[0]
    assert (a.peak, a.step_peak, a.step_peaks) == (0, 0, {1: 0})
