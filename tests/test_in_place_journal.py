"""In-place recoveries in the supervisor: journaled as `in_place` records, folded so that the attempt's plan is the
plan its split equals (what a later relaunch starts from), and shown in the table and the report as rows without
a process of their own."""

import json

import jsonschema

from oomladder.ladder.file import parse_ladder
from oomladder.plan import Plan
from oomladder.process.launch import worker_env
from oomladder.record.history import fold
from oomladder.run.decide import decide, reached_plan
from oomladder.run.outcomes import AttemptResult, Climb
from oomladder.views.html import render_html
from oomladder.views.report import SCHEMA_FILE, build_report, render_markdown
from oomladder.views.table import attempts_table
from tests.test_report_console import render

OOM = {"exc_type": "RuntimeError", "message": "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
       "allocate memory: you tried to allocate 268435456 bytes.", "peak": 900 * 2**20, "peak_measure": "address_space"}
SPLIT = {"type": "in_place", "ts": 6, "attempt": 1, "rank": 0, "outcome": "split", "step": 3, "split_before": 1,
         "split": 2, "rows": 16, "batch": 16, "accumulation": 1, "ooms": 1, "oom": OOM, "seconds": 2.5,
         "numbers": {"tried_to_allocate": 268435456}}
RECORDS = [
    {"type": "run_started", "ts": 0, "command": ["python", "train.py"], "memory_cap": 1200 * 2**20,
     "ladder": {"source": "default ladder (default.yaml)"}},
    {"type": "observed", "ts": 0, "attempt": 1, "plan": {
        "per_device_train_batch_size": 16, "gradient_accumulation_steps": 1, "precision": "fp32",
        "quantization": "none", "gradient_checkpointing": False}, "facts": {"device": "cpu"}},
    {"type": "attempt_started", "ts": 0, "attempt": 1, "rung": None, "plan": {}, "command": ["python", "train.py"]},
    {"type": "progress", "ts": 1, "attempt": 1, "began_at": 0, "max_steps": 6},
    *({"type": "progress", "ts": 1 + s, "attempt": 1, "step": s, "max_steps": 6, "executed": True} for s in (1, 2)),
    SPLIT,
    *({"type": "progress", "ts": 7 + s, "attempt": 1, "step": s, "max_steps": 6, "executed": True} for s in (3, 4, 5,
                                                                                                             6)),
]
FINISHED = [{"type": "attempt_ended", "ts": 20, "attempt": 1, "outcome": "finished", "exit_code": 0, "step": 6},
            {"type": "run_ended", "ts": 20, "status": "finished", "exit_code": 0, "reason": "every step ran once"}]


def test_the_attempts_plan_is_the_plan_its_split_equals():
    view = fold(RECORDS)
    attempt, = view.attempts
    assert attempt.split == 2 and attempt.launched.per_device_train_batch_size == 16
    assert (attempt.plan.per_device_train_batch_size, attempt.plan.gradient_accumulation_steps) == (8, 2)
    assert attempt.plan.effective_batch == view.program_plan.effective_batch == 16
    assert reached_plan(view) == attempt.plan  # a resume starts from it
    assert view.steps_reported and not view.repeated_steps and not view.missing_steps
    assert attempt.steps == list(range(1, 7))


def test_a_later_relaunch_climbs_from_the_equivalent_plan():
    failed = RECORDS + [{"type": "attempt_ended", "ts": 20, "attempt": 1, "outcome": "failed", "exit_code": 1,
                         "step": 4, "failure": {"kind": "cpu_oom", "memory": "device",
                                                "summary": "CPU allocator out of "
                                                "memory", "step": 4, "phase": "train", "numbers": {}}}]
    view = fold(failed)
    ladder = parse_ladder("rungs: [halve_batch]\n", "test")
    verdict = decide(view, AttemptResult(1, 1, view.attempts[0].failure, None, 10.0), ladder, memory_cap=None,
                     several_nodes=False, backoff=lambda s: 0.0, log="x")
    assert isinstance(verdict, Climb)
    plan = verdict.decision.plan
    assert (plan.per_device_train_batch_size, plan.gradient_accumulation_steps) == (4, 4)


def test_the_table_shows_a_row_without_a_new_process():
    text = render(attempts_table(fold(RECORDS + FINISHED)), width=160)
    assert "│ 1 │ start             │ the program's own settings" in text
    assert "│   │ in place: split 2 │ per_device_train_batch_size 16→8" in text
    assert "OOM in step 3/6: recovered in place, no relaunch" in text
    assert "gradient_accumulation_steps 1→2" in text


def test_the_report_shows_the_in_place_rung_with_the_ooms_numbers():
    report = build_report(fold(RECORDS + FINISHED))
    jsonschema.validate(json.loads(json.dumps(report, default=str)), json.loads(SCHEMA_FILE.read_text()))
    row, = report["attempts"][0]["in_place"]
    assert row["rung"] == "in place: split 2" and row["split"] == 2 and row["numbers"]["tried_to_allocate"] == 268435456
    md = render_markdown(report)
    assert "|  | in place: split 2 | per_device_train_batch_size 16→8 gradient_accumulation_steps 1→2 |" in md
    assert ("in place: out of memory in step 3 (tried to allocate 256 MiB); the micro-batch of 16 runs in 2 chunks"
            in md)
    page = render_html(report)
    assert '<tr class="in-place"><td class="num"></td><td>in place: split 2</td>' in page


def test_a_recovery_that_did_not_happen_is_shown_with_its_reason():
    declined = {**SPLIT, "outcome": "declined", "split": 1, "reason": "the program's own compute_loss (T.compute_loss)"}
    records = [r if r is not SPLIT else declined for r in RECORDS][:6] + [declined]
    view = fold(records)
    assert view.attempts[0].split == 1 and view.attempts[0].plan.per_device_train_batch_size == 16
    report = build_report(view)
    row, = report["attempts"][0]["in_place"]
    assert row["rung"] == "in place: not possible" and "T.compute_loss" in row["status_text"]
    assert "relaunched instead: the program's own compute_loss" in render_markdown(report)


def test_checkpointing_turned_on_in_place_is_part_of_the_attempts_plan_and_its_row():
    turned = {**SPLIT, "split": 1, "checkpointing_before": False, "checkpointing": True, "ooms": 5}
    records = [r if r is not SPLIT else turned for r in RECORDS]
    view = fold(records + FINISHED)
    attempt, = view.attempts
    assert attempt.plan.gradient_checkpointing and attempt.plan.per_device_train_batch_size == 16
    assert reached_plan(view) == attempt.plan  # a resume, or a relaunch for another reason, keeps it
    text = render(attempts_table(view), width=160)
    assert "in place: gradient checkpointing │ gradient_checkpointing False→True" in text
    report = build_report(view)
    row, = report["attempts"][0]["in_place"]
    assert row["rung"] == "in place: gradient checkpointing"
    assert "gradient checkpointing turned on, the micro-batch of 16 runs in 1 chunk after 5 OOMs: the same step" in (
        render_markdown(report))
    both = fold([r if r is not SPLIT else {**turned, "split": 4} for r in RECORDS] + FINISHED)
    assert both.attempts[0].plan.per_device_train_batch_size == 4 and both.attempts[0].plan.gradient_checkpointing
    assert build_report(both)["attempts"][0]["in_place"][0]["rung"] == "in place: split 4 + gradient checkpointing"


def test_checkpointing_is_taken_in_place_only_where_the_ladder_has_it(tmp_path):
    attempt = tmp_path / "attempts" / "001"
    assert worker_env({}, attempt, Plan(), Plan(), None, in_place_checkpointing=False)[
        "OOMLADDER_IN_PLACE_CHECKPOINTING"] == "0"
    assert "OOMLADDER_IN_PLACE_CHECKPOINTING" not in worker_env({}, attempt, Plan(), Plan(), None)


def test_no_in_place_reaches_the_worker(tmp_path):
    attempt = tmp_path / "attempts" / "001"
    env = worker_env({}, attempt, Plan(), Plan(), None, in_place=False)
    assert env["OOMLADDER_IN_PLACE"] == "0"
    assert "OOMLADDER_IN_PLACE" not in worker_env({}, attempt, Plan(), Plan(), None)
    assert worker_env({"OOMLADDER_IN_PLACE": "0"}, attempt, Plan(), Plan(), None)["OOMLADDER_IN_PLACE"] == "0"


def test_the_plan_a_split_equals():
    plan = Plan(per_device_train_batch_size=16, gradient_accumulation_steps=2)
    assert plan.split(4) == Plan(per_device_train_batch_size=4, gradient_accumulation_steps=8)
    assert plan.split(1) == plan and plan.split(3) == plan  # only what divides the micro-batch
