"""What the run does after an attempt: a pure function of the journal's view and the attempt's end.
Records in, `Retry | Climb | End` out; no files, clocks or processes."""

import signal
from pathlib import Path

from oomladder.classify import Failure, Kind
from oomladder.ladder import load_ladder, parse_ladder
from oomladder.nodes.world import PeerStop
from oomladder.record.history import fold
from oomladder.run.budget import BudgetState, budgets, exhausted
from oomladder.run.decide import decide, over_budget
from oomladder.run.outcomes import AttemptResult, Climb, End, Retry, Stop, StopReason
from oomladder.status import RunStatus

PROGRAM = {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1, "per_device_eval_batch_size": 16,
           "precision": "fp32", "load_dtype": "float32", "quantization": "none", "gradient_checkpointing": False,
           "dataloader_num_workers": 0, "world_size": 1}
FACTS = {"device": "cpu", "bf16_supported": True, "base_frozen": True}
OOM = Failure(Kind.CPU_OOM, "device", "CPU allocator out of memory", phase="train", step=2)
RESET = Failure(Kind.TRANSIENT, None, "a transient infrastructure failure (Connection reset by peer)")
HANG = Failure(Kind.HANG, None, "no progress for 60 s (--hang-timeout 60)")
LOG = Path("attempts/001/stderr.log")


def view_of(*failures, plan=None):
    """A run whose attempts ended with `failures` in turn (None: finished)."""
    records = [{"type": "run_started", "ts": 0.0, "command": ["python", "train.py"]},
               {"type": "observed", "ts": 0.5, "attempt": 0, "plan": PROGRAM, "facts": FACTS}]
    for n, failure in enumerate(failures, start=1):
        records += [{"type": "attempt_started", "ts": n, "attempt": n, "plan": plan or {}, "rung": None, "reason": ""},
                    {"type": "attempt_ended", "ts": n + 0.5, "attempt": n,
                     "outcome": "finished" if failure is None else "failed",
                     **({"failure": failure.to_dict()} if failure else {})}]
    view = fold(records)
    view.records = records
    return view


def next_step(view, stop=None, ladder=None):
    last = view.attempts[-1]
    result = AttemptResult(last.number, 0 if last.failure is None else 1, last.failure, stop, 1.0)
    return decide(view, result, ladder or load_ladder(None), memory_cap=None, several_nodes=False,
                  backoff=lambda state: 5.0 * 2 ** (state.attempt_number - 1), log=LOG)


def ran(view, *attempts):
    """`view` with the steps each attempt's workers reported: (began_at, [executed steps]) per attempt."""
    records = []
    for number, (began_at, steps) in enumerate(attempts, start=1):
        records.append({"type": "progress", "ts": number + 0.1, "attempt": number, "began_at": began_at})
        records += [{"type": "progress", "ts": number + 0.2, "attempt": number, "step": s, "executed": True}
                    for s in steps]
    out = fold(view.records + records)
    out.records = view.records + records
    return out


def test_a_finished_attempt_ends_the_run_with_every_step_run_once():
    verdict = next_step(ran(view_of(OOM, None), (0, [1, 2]), (2, [3, 4, 5, 6])))
    assert verdict == End("finished", 0, "every step ran once; attempt 2 finished after 1 out-of-memory error; "
                                         "effective batch 16 throughout")


def test_a_finished_run_whose_steps_ran_twice_says_so():
    verdict = next_step(ran(view_of(OOM, None), (0, [1, 2]), (0, [1, 2, 3, 4, 5, 6])))
    assert verdict.status == "finished"
    assert verdict.reason.startswith("attempt 2 finished after 1 out-of-memory error, but steps 1–2 ran more than "
                                     "once")


def test_a_finished_run_of_a_program_that_reports_no_steps_claims_nothing_about_them():
    verdict = next_step(view_of(OOM, None))
    assert "every step" not in verdict.reason and "is not known" in verdict.reason


def test_an_out_of_memory_error_climbs_to_the_ladders_next_plan():
    verdict = next_step(view_of(OOM))
    assert isinstance(verdict, Climb)
    assert verdict.decision.rung == "bf16"
    assert verdict.decision.plan.precision == "bf16" and verdict.decision.plan.effective_batch == 16


def test_no_rung_left_ends_the_run_with_exit_4_and_keeps_the_ladders_verdict():
    verdict = next_step(view_of(OOM, plan={"precision": "bf16", "load_dtype": "bfloat16"}),
                        ladder=parse_ladder("rungs: [bf16]", "t"))
    assert isinstance(verdict, End) and (verdict.status, verdict.exit_code) == ("ladder_exhausted", 4)
    assert verdict.decision is not None and verdict.decision.exhausted
    assert "bf16: training already runs in bf16" in verdict.reason


def test_a_ladder_exhausted_before_any_step_under_a_cap_names_the_cap():
    at_once = Failure(Kind.CPU_OOM, "device", "CPU allocator out of memory", phase="train", step=0)
    view = view_of(at_once, plan={"precision": "bf16", "load_dtype": "bfloat16"})
    result = AttemptResult(1, 1, at_once, None, 1.0)
    capped = decide(view, result, parse_ladder("rungs: [bf16]", "t"), memory_cap=1200, several_nodes=False,
                    backoff=lambda state: 5.0, log=LOG)
    assert "No attempt finished a step under the memory cap of 1.2 KiB" in capped.reason
    assert "give --memory-cap with its unit" in capped.reason and "bigger device" not in capped.reason
    trained = decide(ran(view, (0, [1, 2])), result, parse_ladder("rungs: [bf16]", "t"), memory_cap=1200,
                     several_nodes=False, backoff=lambda state: 5.0, log=LOG)
    assert "memory cap" not in trained.reason and "Try a bigger device" in trained.reason


def test_a_bug_ends_the_run_with_exit_3_without_walking_the_ladder():
    verdict = next_step(view_of(Failure(Kind.ERROR, None, "KeyError: 'labels'")))
    assert (verdict.status, verdict.exit_code) == ("not_memory", 3)
    assert "ladder was not walked" in verdict.reason and str(LOG) in verdict.reason


def test_a_transient_failure_is_retried_on_the_same_plan_with_backoff_three_times():
    first = next_step(view_of(RESET))
    assert isinstance(first, Retry) and first.delay == 5.0 and first.plan.per_device_train_batch_size == 16
    assert next_step(view_of(RESET, RESET, RESET)).delay == 20.0
    fourth = next_step(view_of(RESET, RESET, RESET, RESET))
    assert (fourth.status, fourth.exit_code) == ("transient", 3)


def test_a_hang_is_retried_once_at_once_and_a_second_hang_ends_the_run():
    assert next_step(view_of(HANG)) == Retry(view_of(HANG).attempts[-1].plan, f"{HANG.summary}: retry 1 on the "
                                                                                "same plan", 0.0)
    assert next_step(view_of(HANG, HANG)).status == "hang"


def test_a_stopped_worker_ends_the_run_with_the_stops_own_code():
    interrupted = Failure(Kind.INTERRUPTED, None, "stopped by SIGTERM")
    by_signal = next_step(view_of(interrupted), StopReason(Stop.SIGNAL, signum=signal.SIGTERM))
    assert (by_signal.status, by_signal.exit_code) == ("interrupted", 143)
    spent = exhausted(budgets(None, 60.0), BudgetState(1, 61.0))
    by_budget = next_step(view_of(interrupted), StopReason(Stop.BUDGET, budget=spent))
    assert (by_budget.status, by_budget.exit_code) == ("budget_exhausted", 5)
    peer = PeerStop.of(1, {"why": "SIGTERM", "status": "interrupted", "exit_code": 143})
    by_peer = next_step(view_of(interrupted), StopReason(Stop.PEER, peer=peer))
    assert (by_peer.status, by_peer.exit_code) == (RunStatus.INTERRUPTED, 143)


def test_a_stop_outranks_the_oom_it_interrupted():
    assert next_step(view_of(OOM), StopReason(Stop.SIGNAL, signum=signal.SIGINT)).exit_code == 130


def test_a_command_that_cannot_start_is_bad_input():
    verdict = next_step(view_of(Failure(Kind.LAUNCH_FAILED, None, "cannot start 'trian.py': No such file")))
    assert (verdict.status, verdict.exit_code) == ("launch_failed", 2)


def test_a_spent_budget_ends_the_run_between_attempts_naming_what_would_have_run():
    spent = exhausted(budgets(2, None), BudgetState(2, 0.0))
    end = over_budget(spent, "halve_batch")
    assert (end.status, end.exit_code) == ("budget_exhausted", 5)
    assert "--max-attempts" in end.reason and "halve_batch" in end.reason
    assert over_budget(None, "halve_batch") is None


# --- a rung that breaks the program is rolled back ------------------------------------------------------------

BF16_ON_CPU = Failure(Kind.ERROR, None, "ValueError: Your setup doesn't support bf16/gpu.", phase="train", step=None)


def after_a_broken_rung(broken, rungs=(2,), at_step=2):
    """Attempt 1 ran steps 1-2 and ran out of memory in step 3; the ladder chose `rungs` (by index in the default
    ladder); attempt 2 failed with `broken`."""
    view = ran(view_of(Failure(Kind.CPU_OOM, "device", "CPU allocator out of memory", phase="train", step=at_step),
                       broken), (0, list(range(1, at_step + 1))), (at_step, []))
    decision = {"type": "decision", "ts": 1.7, "attempt": 1, "rung": "bf16", "rung_index": rungs[0],
                "rung_indices": list(rungs), "reason": "", "plan": {}, "skipped": []}
    records = sorted(view.records + [decision], key=lambda r: r["ts"])
    out = fold(records)
    out.records = records
    return out


def test_a_rung_that_broke_a_program_that_worked_is_undone_and_the_ladder_moves_on():
    verdict = next_step(after_a_broken_rung(BF16_ON_CPU))
    assert isinstance(verdict, Climb) and verdict.decision.rung == "int8"
    # back to the plan before bf16, then the ladder's next rung
    assert (verdict.decision.plan.precision, verdict.decision.plan.quantization) == ("fp32", "int8")
    assert verdict.rollback.attempt == 2
    assert verdict.rollback.incompatible == (("bf16", 2, BF16_ON_CPU.summary),)
    assert verdict.decision.reason.startswith("bf16 broke the program (ValueError: Your setup doesn't support")


def test_a_worker_stopped_from_outside_is_a_stop_never_a_rung_that_broke_the_program():
    for code, name, expected in ((-signal.SIGTERM, "SIGTERM", 143), (128 + signal.SIGINT, "SIGINT", 130),
                                 (-signal.SIGHUP, "SIGHUP", 129)):
        stopped = Failure(Kind.INTERRUPTED, None, f"stopped by {name}", phase="train", step=2)
        view = after_a_broken_rung(stopped)
        last = view.attempts[-1]
        verdict = decide(view, AttemptResult(last.number, code, stopped, None, 1.0), load_ladder(None),
                         memory_cap=None, several_nodes=False, backoff=lambda state: 0.0, log=LOG)
        assert isinstance(verdict, End) and verdict.rollback is None and verdict.decision is None
        assert (verdict.status, verdict.exit_code) == ("interrupted", expected)
        assert "broke" not in verdict.reason and "resume" in verdict.reason


def test_of_a_stacked_decision_only_the_rungs_that_change_the_code_are_blamed():
    verdict = next_step(after_a_broken_rung(BF16_ON_CPU, rungs=(2, 5)))  # bf16 + halve_batch
    assert [name for name, _, _ in verdict.rollback.incompatible] == ["bf16"]  # halve_batch stays on the ladder


def test_an_error_where_the_earlier_plan_never_went_is_still_a_bug():
    later = Failure(Kind.ERROR, None, "KeyError: 'labels'", phase="train", step=4)  # the OOM was in step 3
    verdict = next_step(after_a_broken_rung(later))
    assert (verdict.status, verdict.exit_code) == ("not_memory", 3)


def test_an_error_in_the_step_the_oom_struck_is_at_a_point_the_earlier_plan_reached():
    # Attempt 1 finished steps 1-2 and ran out of memory in step 3: an error anywhere in step 3 (its end included,
    # where the count already reads 3) undoes the rung; step 4 is beyond anything that plan reached.
    in_that_step = Failure(Kind.ERROR, None, "RuntimeError: spectral norm of a bf16 tensor", phase="train", step=3)
    assert isinstance(next_step(after_a_broken_rung(in_that_step)), Climb)
    beyond = Failure(Kind.ERROR, None, "RuntimeError: spectral norm of a bf16 tensor", phase="train", step=4)
    assert isinstance(next_step(after_a_broken_rung(beyond)), End)


def test_a_rung_that_broke_the_program_is_never_tried_again():
    view = after_a_broken_rung(BF16_ON_CPU)
    undo = {"type": "decision", "ts": 2.7, "attempt": 2, "rung": "halve_batch", "rung_index": 5, "rung_indices": [5],
            "reason": "", "plan": {}, "skipped": [], "rolled_back": 2, "incompatible": [["bf16", 2, "ValueError"]]}
    view = fold(view.records + [undo])
    assert view.incompatible == {2: "ValueError"} and view.rolled_back == {2}
    assert view.rung_uses == {5: 1}  # the undone decision's bf16 is not counted as used
