"""What the run does after an attempt: a pure function of the journal's view and the attempt's end.
Records in, `Retry | Climb | End` out; no files, clocks or processes."""

import signal
from dataclasses import replace
from pathlib import Path

from oomladder.classify import Failure, Kind
from oomladder.ladder import Decision, load_ladder, parse_ladder
from oomladder.nodes.world import PeerStop
from oomladder.plan import Plan
from oomladder.record.history import fold
from oomladder.run.budget import BudgetState, budgets, exhausted
from oomladder.run.decide import arithmetic, cap_warning, decide, evaluation_owed, over_budget, reached_plan
from oomladder.run.outcomes import AttemptResult, Climb, End, Retry, Rollback, Stop, StopReason
from oomladder.status import RunStatus
from tests import test_load_phase as load_phase
from tests.test_foresight import CAP, view_after_oom

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
    verdict = next_step(view_of(OOM, plan={"precision": "bf16", "load_dtype": "bfloat16", "quantization": "int8"}),
                        ladder=parse_ladder("rungs: [bf16, int8]", "t"))
    assert isinstance(verdict, End) and (verdict.status, verdict.exit_code) == ("ladder_exhausted", 4)
    assert verdict.decision is not None and verdict.decision.exhausted
    assert verdict.reason == ("attempt 1 ran out of memory and no rung of the ladder is left that saves device memory "
                              "(bf16: training already runs in bf16; int8: base weights are already loaded in int8). "
                              "Try a bigger device, a smaller model or sequence, or a ladder with more rungs.")


def test_a_ladder_exhausted_before_any_step_under_a_cap_names_the_cap():
    at_once = Failure(Kind.CPU_OOM, "device", "CPU allocator out of memory", phase="train", step=0)
    view = view_of(at_once, plan={"precision": "bf16", "load_dtype": "bfloat16"})
    result = AttemptResult(1, 1, at_once, None, 1.0)
    capped = decide(view, result, parse_ladder("rungs: [bf16]", "t"), memory_cap=1200, several_nodes=False,
                    backoff=lambda state: 5.0, log=LOG)
    assert capped.reason == ("attempt 1 ran out of memory and no rung of the ladder is left that saves device memory "
                             "(bf16: training already runs in bf16). No attempt finished a step under the memory cap "
                             "of 1.2 KiB: if that is not the size you meant, give --memory-cap with its unit (1200MiB, "
                             "16GiB); otherwise try a bigger cap, a smaller model or sequence, or a ladder with more "
                             "rungs.")
    trained = decide(ran(view, (0, [1, 2])), result, parse_ladder("rungs: [bf16]", "t"), memory_cap=1200,
                     several_nodes=False, backoff=lambda state: 5.0, log=LOG)
    assert "memory cap" not in trained.reason and "Try a bigger device" in trained.reason


def test_a_bug_ends_the_run_with_exit_3_without_walking_the_ladder():
    verdict = next_step(view_of(Failure(Kind.ERROR, None, "KeyError: 'labels'")))
    assert (verdict.status, verdict.exit_code) == ("not_memory", 3)
    assert verdict.reason == (f"attempt 1 failed with error: KeyError: 'labels'. No memory setting fixes this, so "
                              f"the ladder was not walked; see {LOG}")


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
    return decided(view, rungs)


def decided(view, rungs, attempt=1):
    """`view` with the ladder's decision after attempt `attempt`: `rungs`, by index in the default ladder."""
    decision = {"type": "decision", "ts": attempt + 0.7, "attempt": attempt, "rung": "bf16" if rungs else None,
                "rung_index": rungs[0] if rungs else None, "rung_indices": list(rungs), "reason": "", "plan": {},
                "skipped": []}
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
                                 (-signal.SIGHUP, "SIGHUP", 129), (128 + signal.SIGTERM, "SIGTERM", 143),
                                 (-signal.SIGUSR1, "SIGUSR1", 130)):
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


# --- what each end says, and the exit code it carries ---------------------------------------------------------

def test_a_command_that_cannot_start_says_why_in_the_launchers_own_words():
    cannot = Failure(Kind.LAUNCH_FAILED, None, "cannot start 'trian.py': No such file")
    assert next_step(view_of(cannot)) == End("launch_failed", 2, "cannot start 'trian.py': No such file")


def test_a_transient_retry_says_how_long_it_waits_and_the_backoff_counts_the_failures_in_a_row():
    asked = []

    def backoff(state):
        asked.append(state.attempt_number)
        return 2.5

    view = view_of(RESET, OOM, RESET, RESET)
    verdict = decide(view, AttemptResult(4, 1, RESET, None, 1.0), load_ladder(None), memory_cap=None,
                     several_nodes=False, backoff=backoff, log=LOG)
    assert verdict == Retry(view.attempts[-1].plan, f"{RESET.summary}: retry 2 on the same plan after 2.5 s", 2.5)
    assert asked == [2]  # the reset before the OOM is not part of the streak


def test_failures_that_keep_coming_end_the_run_naming_the_streak_and_the_log():
    fourth = next_step(view_of(RESET, RESET, RESET, RESET))
    assert fourth == End("transient", 3, f"attempt 4: {RESET.summary}, 4 times in a row; stopped after 3 retries. "
                                         f"See {LOG}")
    assert next_step(view_of(HANG, HANG)).reason.startswith(f"attempt 2: {HANG.summary}, 2 times in a row")


def test_a_worker_stopped_from_outside_says_nothing_was_changed_and_how_to_continue():
    interrupted = Failure(Kind.INTERRUPTED, None, "stopped by SIGTERM")
    view = view_of(OOM, interrupted)
    verdict = decide(view, AttemptResult(2, None, interrupted, None, 1.0), load_ladder(None), memory_cap=None,
                     several_nodes=False, backoff=lambda state: 0.0, log=LOG)
    # no exit code to read the signal from: the run ends as an interrupted shell command does
    assert verdict == End("interrupted", 130, "attempt 2's worker was stopped by SIGTERM from outside oomladder; "
                                              "nothing was changed. Run the same command again (or oomladder resume) "
                                              "to continue.")


def test_each_stop_of_the_supervisors_says_what_stopped_the_group_and_how_to_continue():
    interrupted = Failure(Kind.INTERRUPTED, None, "stopped by SIGTERM")
    by_signal = next_step(view_of(interrupted), StopReason(Stop.SIGNAL, signum=signal.SIGTERM))
    assert by_signal.reason == ("oomladder received SIGTERM; the worker group was stopped. Run the same command again "
                                "(or oomladder resume) to continue.")
    spent = exhausted(budgets(None, 60.0), BudgetState(1, 61.0))
    by_budget = next_step(view_of(interrupted), StopReason(Stop.BUDGET, budget=spent))
    assert by_budget.reason == ("the --max-wall-time budget (60 s of wall time) ran out during an attempt; its worker "
                                "group was stopped. Run the same command again to continue.")
    peer = PeerStop.of(1, {"why": "SIGTERM", "status": "budget_exhausted", "exit_code": 5})
    by_peer = next_step(view_of(interrupted), StopReason(Stop.PEER, peer=peer))
    assert by_peer == End("budget_exhausted", 5, "node 1 was stopped (SIGTERM), and this node's group with it. Run "
                                                 "the same command on every node to continue.")


def test_a_signal_without_an_exit_code_of_its_own_ends_the_run_with_130():
    verdict = next_step(view_of(OOM), StopReason(Stop.SIGNAL, signum=signal.SIGUSR1))
    assert (verdict.status, verdict.exit_code) == ("interrupted", 130) and "received SIGUSR1" in verdict.reason


def test_a_spent_budget_says_what_would_have_run_and_how_to_continue():
    spent = exhausted(budgets(2, None), BudgetState(2, 0.0))
    assert over_budget(spent, "halve_batch") == End(
        "budget_exhausted", 5, "the --max-attempts budget (2 attempts) is spent; the next attempt would have been: "
        "halve_batch. Run the same command again to continue.")


# --- what a finished run says of its steps --------------------------------------------------------------------

def test_a_finished_run_counts_only_the_out_of_memory_errors_and_says_when_the_program_reports_no_steps():
    verdict = next_step(view_of(OOM, RESET, OOM, None))
    assert verdict.reason == ("attempt 4 finished after 2 out-of-memory errors; the program reports no optimizer steps "
                              "to oomladder, so whether any step ran twice is not known; effective batch 16 throughout")
    assert next_step(view_of(None)).reason.startswith("attempt 1 finished; the program reports no optimizer steps")


def test_a_finished_run_whose_steps_ran_twice_calls_it_lost_work():
    verdict = next_step(ran(view_of(OOM, None), (0, [1, 2]), (0, [1, 2, 3])))
    assert verdict.reason == ("attempt 2 finished after 1 out-of-memory error, but steps 1–2 ran more than once: an "
                              "attempt trained them again instead of resuming (lost work); effective batch 16 "
                              "throughout")


def test_a_finished_run_with_steps_no_attempt_ran_names_them():
    verdict = next_step(ran(view_of(OOM, None), (0, [1, 2]), (3, [4, 5])))
    assert verdict.reason == ("attempt 2 finished after 1 out-of-memory error, but no attempt reported running "
                              "steps 3; effective batch 16 throughout")


def test_a_finished_run_of_sparse_step_numbers_claims_nothing_about_each_step():
    samples = range(16, 16 * (2 * 4096 + 2), 16)  # more ranges than a step set keeps one by one
    verdict = next_step(ran(view_of(None), (0, samples)))
    assert verdict.reason == ("attempt 1 finished; the program's step numbers are too sparse to check one by one (it "
                              "may report samples, not optimizer steps); effective batch 16 throughout")


def test_a_finished_run_counts_the_errors_recovered_in_place():
    split = {"type": "in_place", "ts": 1.3, "attempt": 1, "rank": 0, "outcome": "split", "step": 2, "split_before": 1,
             "split": 2, "rows": 16, "batch": 16, "accumulation": 1, "ooms": 1, "seconds": 1.0}
    once = fold(view_of(None).records + [split])
    assert next_step(once).reason == ("attempt 1 finished; 1 out-of-memory error recovered in place, without a "
                                      "relaunch; the program reports no optimizer steps to oomladder, so whether any "
                                      "step ran twice is not known; effective batch 16 throughout")
    twice = fold(view_of(None).records + [split, {**split, "ts": 1.4, "step": 3, "split_before": 2, "split": 4}])
    assert "; 2 out-of-memory errors recovered in place, without a relaunch;" in next_step(twice).reason


def test_a_finished_run_of_a_program_whose_batch_is_not_known_says_nothing_of_it():
    records = [r for r in view_of(None).records if r["type"] != "observed"]
    assert next_step(fold(records)).reason.endswith("is not known")


# --- the climb --------------------------------------------------------------------------------------------------

def test_a_load_that_cannot_fit_the_cpu_emulation_in_any_plan_ends_the_run_at_once():
    ran_out = AttemptResult(1, 1, load_phase.OOM, None, 1.0)
    verdict = decide(load_phase.view(), ran_out, load_ladder(None), memory_cap=600 * 2**20, several_nodes=False,
                     backoff=lambda state: 0.0, log=LOG)
    assert isinstance(verdict, End) and (verdict.status, verdict.exit_code) == ("ladder_exhausted", 4)
    assert verdict.decision is None  # no rung was weighed: none would load
    assert verdict.reason.startswith("attempt 1 ran out of memory while the model loaded, and under the CPU emulation "
                                     "the checkpoint's files (321 MiB) are mapped")
    assert verdict.reason.endswith("try it there, or give a larger --memory-cap.")
    fits = decide(load_phase.view(), ran_out, load_ladder(None), memory_cap=800 * 2**20, several_nodes=False,
                  backoff=lambda state: 0.0, log=LOG)
    assert isinstance(fits, Climb) and fits.decision.rung == "bf16"


def test_on_several_nodes_the_ladder_walks_one_rung_per_attempt_though_the_estimate_would_stack_them():
    view = view_after_oom()
    result = AttemptResult(1, 1, view.attempts[-1].failure, None, 1.0)
    one = decide(view, result, load_ladder(None), memory_cap=CAP, several_nodes=False, backoff=None, log=LOG)
    assert one.decision.rung == "bf16 + halve_batch"
    several = decide(view, result, load_ladder(None), memory_cap=CAP, several_nodes=True, backoff=None, log=LOG)
    assert several.decision.rung == "bf16" and several.decision.estimate is None


def test_a_ladder_with_no_rung_for_the_error_says_none_applied():
    verdict = next_step(view_of(OOM), ladder=parse_ladder("rungs: [fewer_workers]", "t"))  # host memory only
    assert isinstance(verdict, End) and (verdict.status, verdict.exit_code) == ("ladder_exhausted", 4)
    assert verdict.reason == ("attempt 1 ran out of memory and no rung of the ladder is left that saves device memory "
                              "(none applied). Try a bigger device, a smaller model or sequence, or a ladder with "
                              "more rungs.")


def test_a_rung_undone_with_nothing_left_after_it_ends_the_run_keeping_the_rollback():
    verdict = next_step(after_a_broken_rung(BF16_ON_CPU, rungs=(0,)), ladder=parse_ladder("rungs: [bf16]", "t"))
    assert isinstance(verdict, End) and (verdict.status, verdict.exit_code) == ("ladder_exhausted", 4)
    assert verdict.rollback.incompatible == (("bf16", 0, BF16_ON_CPU.summary),)
    assert verdict.decision.reason == (f"bf16 broke the program ({BF16_ON_CPU.summary}): back to the plan of attempt "
                                       f"1, and no rung of the ladder is left that saves device memory")
    # The run's end names the attempt that ran out of memory (1), not the one bf16 broke (2).
    assert verdict.reason.startswith(f"attempt 1 ran out of memory and bf16 broke the program ({BF16_ON_CPU.summary})")


def test_an_undone_rung_stays_out_of_later_climbs():
    view = after_a_broken_rung(BF16_ON_CPU)
    undo = {"type": "decision", "ts": 2.7, "attempt": 2, "rung": "int8", "rung_index": 4, "rung_indices": [4],
            "reason": "", "plan": {"quantization": "int8"}, "skipped": [], "rolled_back": 2,
            "incompatible": [["bf16", 2, BF16_ON_CPU.summary]]}
    again = [{"type": "attempt_started", "ts": 3, "attempt": 3, "plan": {"quantization": "int8"}, "rung": "int8",
              "reason": ""},
             {"type": "attempt_ended", "ts": 3.5, "attempt": 3, "outcome": "failed", "failure": OOM.to_dict()}]
    verdict = next_step(fold(view.records + [undo] + again))
    assert isinstance(verdict, Climb) and verdict.decision.rung == "halve_batch"  # not bf16, next in line


# --- a rung that broke the program, or the program's own bug ---------------------------------------------------

def test_the_rung_at_the_top_of_the_ladder_can_be_the_one_undone():
    verdict = next_step(after_a_broken_rung(BF16_ON_CPU, rungs=(0,)),
                        ladder=parse_ladder("rungs: [bf16, halve_batch]", "t"))
    assert isinstance(verdict, Climb) and verdict.decision.rung == "halve_batch"
    assert verdict.rollback == Rollback(2, (("bf16", 0, BF16_ON_CPU.summary),))
    assert verdict.decision.reason.startswith(f"bf16 broke the program ({BF16_ON_CPU.summary}): back to the plan of "
                                              f"attempt 1; half the activations")


def test_a_rung_the_ladder_no_longer_holds_is_not_blamed():
    # the journal's decision stacked rungs 0 and 2; the ladder given now has two rungs
    verdict = next_step(after_a_broken_rung(BF16_ON_CPU, rungs=(0, 2)),
                        ladder=parse_ladder("rungs: [bf16, halve_batch]", "t"))
    assert verdict.rollback.incompatible == (("bf16", 0, BF16_ON_CPU.summary),)


def test_where_no_rung_taken_changes_the_code_the_rungs_taken_are_blamed():
    verdict = next_step(after_a_broken_rung(BF16_ON_CPU, rungs=(5,)))  # halve_batch alone
    assert verdict.rollback.incompatible == (("halve_batch", 5, BF16_ON_CPU.summary),)


def test_an_error_after_an_attempt_that_did_not_run_out_of_memory_is_the_programs_bug():
    verdict = next_step(decided(ran(view_of(RESET, BF16_ON_CPU), (0, [1, 2]), (2, [])), (2,)))
    assert (verdict.status, verdict.exit_code) == ("not_memory", 3) and verdict.rollback is None


def test_an_error_after_an_oom_without_a_rung_decided_is_the_programs_bug():
    view = ran(view_of(OOM, BF16_ON_CPU), (0, [1, 2]), (2, []))
    assert next_step(view).status == "not_memory"  # no decision journaled: nothing to undo
    assert next_step(decided(view, ())).status == "not_memory"


def test_the_same_error_again_after_a_rung_is_the_programs_bug_not_the_rungs():
    same = Failure(Kind.ERROR, None, OOM.summary, phase="train", step=2)
    assert next_step(after_a_broken_rung(same)).status == "not_memory"


def test_an_error_in_the_step_after_the_last_one_reported_is_where_the_earlier_plan_went():
    # the earlier OOM names no step: the steps its workers reported say how far that plan got
    no_step = Failure(Kind.CPU_OOM, "device", "CPU allocator out of memory", phase="train")
    view = decided(ran(view_of(no_step, BF16_ON_CPU), (0, [1, 2, 3]), (3, [])), (2,))
    at = Failure(Kind.ERROR, None, "RuntimeError: bf16", phase="train", step=4)
    assert isinstance(next_step(with_last_failure(view, at)), Climb)
    assert next_step(with_last_failure(view, replace(at, step=5))).status == "not_memory"


def with_last_failure(view, failure):
    records = [({**r, "failure": failure.to_dict()} if r["type"] == "attempt_ended" and r["attempt"] == 2 else r)
               for r in view.records]
    out = fold(records)
    out.records = records
    return out


# --- where a continued run starts, and what its next attempt is told ------------------------------------------

def decision_after(view, attempt, plan):
    """`view` with the ladder's decision after attempt `attempt`: `plan` (None: no rung left)."""
    record = {"type": "decision", "ts": attempt + 0.7, "attempt": attempt, "rung": "halve_batch", "rung_index": 5,
              "rung_indices": [5], "reason": "", "plan": plan, "skipped": []}
    return fold(sorted(view.records + [record], key=lambda r: r["ts"]))


def test_a_continued_run_starts_on_the_plan_the_last_attempts_decision_chose():
    halved = {**PROGRAM, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}
    assert reached_plan(decision_after(view_of(OOM), 1, halved)).per_device_train_batch_size == 8


def test_a_continued_run_starts_on_the_last_attempts_plan_where_no_decision_followed_it():
    view = view_of(OOM, OOM, plan={"precision": "bf16"})
    halved = {**PROGRAM, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}
    assert reached_plan(decision_after(view, 1, halved)) == view.attempts[-1].plan  # attempt 2 came after it
    assert reached_plan(decision_after(view, 2, None)) == view.attempts[-1].plan  # no rung was left
    assert reached_plan(view) == view.attempts[-1].plan
    assert reached_plan(fold([])) == Plan()  # nothing ran yet: the program's own plan


def test_an_evaluation_cut_short_is_owed_only_where_the_next_attempt_resumes_at_its_step():
    in_eval = Failure(Kind.CPU_OOM, "device", "CPU allocator out of memory", phase="eval", step=4)
    view = view_of(in_eval)
    assert evaluation_owed(view, 4) == 4
    assert evaluation_owed(view, 2) is None  # resumed at step 2: steps 3-4 run again, and it with them
    assert evaluation_owed(view, None) is None
    assert evaluation_owed(view_of(OOM), 2) is None  # the OOM was in training
    assert evaluation_owed(view_of(None), 4) is None
    assert evaluation_owed(fold([]), 4) is None


def test_a_memory_cap_no_model_fits_in_is_taken_for_a_forgotten_unit():
    assert cap_warning(1200) == ("the memory cap, 1.2 KiB, is far under any model: every attempt will run out of "
                                 "memory. Check --memory-cap's unit (1200MiB, 16GiB)")
    assert cap_warning(64 * 2**20 - 1) is not None
    assert cap_warning(64 * 2**20) is None and cap_warning(None) is None and cap_warning(0) is None


# --- --verbose: the arithmetic behind a decision --------------------------------------------------------------

def test_verbose_shows_the_errors_numbers_the_estimate_its_calibration_and_the_rungs_left_out():
    view = view_after_oom(tried=500 * 2**20)
    verdict = decide(view, AttemptResult(1, 1, view.attempts[-1].failure, None, 1.0), load_ladder(None),
                     memory_cap=CAP, several_nodes=False, backoff=None, log=LOG)
    lines = arithmetic(view, verdict.decision, CAP)
    assert lines[:3] == [
        "the error's numbers: tried to allocate 500 MiB",
        "estimated peak at micro-batch 16 x 256 tokens: 1.9 GiB for the plan that failed, 965 MiB for the next, "
        "against 1.1 GiB usable",
        "calibration: +107 MiB on the arithmetic (what it missed, from this run's measured peaks and out-of-memory "
        "errors)"]
    assert lines[3] == ("where the estimated peak of the plan that failed goes: weights 74.6 MiB, optimizer states "
                        "256 KiB, activations 245 MiB, logits 1.5 GiB")
    assert lines[4:] == [f"left out: {name}: {why}" for name, why in verdict.decision.skipped] and lines[4:]


def test_verbose_works_out_a_one_rung_decision_with_the_loops_own_estimate():
    view = view_after_oom()
    verdict = decide(view, AttemptResult(1, 1, view.attempts[-1].failure, None, 1.0), load_ladder(None),
                     memory_cap=CAP, several_nodes=True, backoff=None, log=LOG)
    lines = arithmetic(view, verdict.decision, CAP)
    assert lines[0] == ("estimated peak at micro-batch 16 x 256 tokens: 1.9 GiB for the plan that failed, 1.7 GiB for "
                        "the next, against 1.1 GiB usable")  # bf16 alone: not enough, one rung at a time
    assert lines[1].startswith("calibration: +107 MiB") and lines[2].startswith("where the estimated peak")


def test_verbose_says_when_there_is_nothing_to_estimate():
    no_estimate = ["no estimate: the program did not report its model's shape, or there is no device size to fit in "
                   "(no --memory-cap, and not a CUDA device): the ladder's next rung, one at a time"]
    view = view_of(OOM)
    verdict = next_step(view)
    assert arithmetic(view, verdict.decision, CAP) == no_estimate + [f"left out: {name}: {why}"
                                                                     for name, why in verdict.decision.skipped]
    modelled = view_after_oom()
    exhausted_decision = Decision(None, None, None, "no rung left")
    assert arithmetic(modelled, exhausted_decision, CAP)[-1] == no_estimate[0]
    assert arithmetic(fold([]), exhausted_decision, CAP) == no_estimate


def test_verbose_shows_a_calibration_that_lowers_the_arithmetic_and_no_micro_batch_it_was_not_told():
    said = {"before": 2 * 2**30, "after": 2**30, "capacity": 3 * 2**29, "calibration": -100 * 2**20,
            "split": {"weights": 2**29, "logits": 0}}
    lines = arithmetic(view_of(OOM), Decision(Plan(), "bf16", 2, "", estimate=said), CAP)
    assert lines == ["estimated peak: 2.0 GiB for the plan that failed, 1.0 GiB for the next, against 1.5 GiB usable",
                     "calibration: -100 MiB on the arithmetic (what it missed, from this run's measured peaks and "
                     "out-of-memory errors)",
                     "where the estimated peak of the plan that failed goes: weights 512 MiB"]  # a share of 0 is not
    bare = arithmetic(view_of(OOM), Decision(Plan(), "bf16", 2, "", estimate={**said, "calibration": None,
                                                                               "split": None}), CAP)
    assert bare[1].startswith("calibration: +0 B on the arithmetic") and len(bare) == 2


def test_a_rung_that_broke_the_program_after_a_retried_blink_is_undone():
    view = decided(ran(view_of(RESET, OOM, BF16_ON_CPU), (0, []), (0, [1, 2]), (2, [])), (2,), attempt=2)
    verdict = next_step(view)
    assert isinstance(verdict, Climb) and verdict.rollback == Rollback(3, (("bf16", 2, BF16_ON_CPU.summary),))
    assert verdict.decision.reason.startswith(f"bf16 broke the program ({BF16_ON_CPU.summary}): back to the plan of "
                                              f"attempt 2; ")


def ended_at(view, attempt, step):
    """`view` with attempt `attempt`'s end journaled at `step` (the watcher's last look at its workers)."""
    records = [({**r, "step": step} if r["type"] == "attempt_ended" and r["attempt"] == attempt else r)
               for r in view.records]
    out = fold(records)
    out.records = records
    return out


def test_how_far_the_earlier_plan_got_is_read_from_the_oom_the_steps_reported_or_where_the_attempt_ended():
    no_step = Failure(Kind.CPU_OOM, "device", "CPU allocator out of memory", phase="train")
    error_in = {step: Failure(Kind.ERROR, None, "RuntimeError: bf16", phase="train", step=step) for step in (2, 4, 5)}
    # an OOM in the first step, nothing reported: step 2 is beyond it
    assert next_step(decided(view_of(no_step, error_in[2]), (2,))).status == "not_memory"
    # the attempt's end says how far it got
    ended = ended_at(decided(view_of(no_step, error_in[4]), (2,)), 1, 3)
    assert isinstance(next_step(ended), Climb)
    # the steps its workers ran, journaled as ranges (a flood of them)
    flood = {"type": "progress", "ts": 1.2, "attempt": 1, "executed": True, "steps": [[1, 3]]}
    for error, verdict in ((error_in[4], Climb), (error_in[5], End)):
        records = sorted(view_of(no_step, error).records + [flood], key=lambda r: r["ts"])
        flooded = fold(records)
        flooded.records = records
        assert isinstance(next_step(decided(flooded, (2,))), verdict)


def test_verbose_shows_each_of_the_errors_numbers_in_words():
    cuda = Failure(Kind.CUDA_OOM, "device", "CUDA out of memory", phase="train", step=2,
                   numbers={"tried_to_allocate": 500 * 2**20, "total_capacity": 80 * 2**30, "free": 3 * 2**20})
    lines = arithmetic(view_of(cuda), Decision(None, None, None, "no rung left"), None)
    assert lines[0] == "the error's numbers: tried to allocate 500 MiB, total capacity 80.0 GiB, free 3.0 MiB"
