"""What the run does after an attempt: a pure function of the journal's view and how the attempt ended.

`decide` returns `Retry` (the same plan again: the infrastructure blinked, or the worker hung),
`Climb` (the ladder's next plan, several rungs at once where the estimate says one is not enough)
or `End` (finished, a bug, no rung left, interrupted). The loop journals and acts on it; nothing
here reads a file, a clock or a process. The helpers below are the other pure questions the loop
asks of the journal: where a run continues, what the next attempt is told, and (`--verbose`) the
arithmetic behind a decision, in words.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from oomladder.classify import Failure, Kind, signal_of
from oomladder.ladder import Decision, Ladder
from oomladder.memory.foresight import Fit, climb_to_fit, fit_for, load_wall
from oomladder.plan import Plan
from oomladder.record.history import RunView
from oomladder.run.budget import Budget, BudgetState
from oomladder.run.config import (
    EXIT_BUDGET,
    EXIT_FINISHED,
    EXIT_INTERRUPTED,
    EXIT_LADDER_EXHAUSTED,
    EXIT_NOT_MEMORY,
    EXIT_USAGE,
)
from oomladder.run.outcomes import AttemptResult, Climb, End, Next, Retry, Rollback, Stop, StopReason
from oomladder.status import RunStatus
from oomladder.units import SMALLEST_MODEL, format_size, format_steps

# Failures that no plan causes: the same plan again, this many times in a row at most, then the run ends with
# the status that names them.
RETRIES_ON_SAME_PLAN = {Kind.HANG: 1, Kind.TRANSIENT: 3}
GAVE_UP = {Kind.HANG: RunStatus.HANG, Kind.TRANSIENT: RunStatus.TRANSIENT}


def decide(view: RunView, result: AttemptResult, ladder: Ladder, *, memory_cap: int | None, several_nodes: bool,
           backoff: Callable[[Any], float], log: Path) -> Next:
    """The next step of the run after `result`, which `view` (the journal folded) already holds."""
    failure, number = result.failure, result.number
    if failure is None:
        return End(RunStatus.FINISHED, EXIT_FINISHED, finished_reason(view))
    if result.stop is not None:
        return stopped(result.stop)
    if failure.kind is Kind.LAUNCH_FAILED:
        return End(RunStatus.LAUNCH_FAILED, EXIT_USAGE, failure.summary)
    if failure.kind is Kind.INTERRUPTED:
        # Someone stopped the worker itself (a scheduler, a person): a stop, never a rung that broke the program.
        return End(RunStatus.INTERRUPTED, _stop_exit_code(result.exit_code),
                   f"attempt {number}'s worker was {failure.summary} from outside oomladder; nothing was changed. "
                   f"Run the same command again (or oomladder resume) to continue.")
    current = view.attempts[-1].plan
    if failure.kind in RETRIES_ON_SAME_PLAN:
        allowed, count = RETRIES_ON_SAME_PLAN[failure.kind], streak(view, failure.kind)
        if count > allowed:
            return End(GAVE_UP[failure.kind], EXIT_NOT_MEMORY, f"attempt {number}: {failure.summary}, {count} "
                       f"times in a row; stopped after {allowed} retries. See {log}")
        delay = backoff(BudgetState(count, 0.0)) if failure.kind is Kind.TRANSIENT else 0.0
        why = f"{failure.summary}: retry {count} on the same plan" + (f" after {delay:g} s" if delay else "")
        return Retry(current, why, delay)
    if not failure.is_memory and (rolled := roll_back(view, failure, ladder, memory_cap, several_nodes)) is not None:
        return rolled
    if not failure.is_memory:
        return End(RunStatus.NOT_MEMORY, EXIT_NOT_MEMORY,
                   f"attempt {number} failed with {failure.kind.value}: {failure.summary}. No memory setting fixes "
                   f"this, so the ladder was not walked; see {log}")
    return _climb(view, ladder, memory_cap, several_nodes, failure)


def _climb(view: RunView, ladder: Ladder, memory_cap: int | None, several_nodes: bool, failure: Failure,
           rollback: Rollback | None = None) -> Climb | End:
    """The ladder's next plan after the last attempt's out-of-memory error, `failure`, leaving out the rungs that
    broke this program (after a rollback, `view` is without the broken attempt: its last is the one that ran out
    of memory)."""
    last = view.attempts[-1]
    number = last.number
    if failure.phase == "load" and (wall := load_wall(view, memory_cap)) is not None:
        return End(RunStatus.LADDER_EXHAUSTED, EXIT_LADDER_EXHAUSTED,
                   f"attempt {number} ran out of memory while the model loaded, and {wall}.", None, rollback)
    # Each node calibrates the estimate from its own ranks' peaks, and every node must take the same
    # decision: on several nodes the ladder walks one rung per attempt.
    fit = None if several_nodes else fit_for(view, memory_cap)
    broke = frozenset(view.incompatible) | {i for _, i, _ in (rollback.incompatible if rollback else ())}
    decision = climb_to_fit(ladder, last.plan, view.facts, failure, view.rung_uses, fit, broke)
    if rollback is not None:
        decision = replace(decision, reason=f"{rollback.what_broke}: back to the plan of attempt {last.number}"
                           + (f"; {decision.reason}" if decision.plan is not None else f", and {decision.reason}"))
    if decision.plan is None:
        tried = "; ".join(f"{name}: {why}" for name, why in decision.skipped) or "none applied"
        return End(RunStatus.LADDER_EXHAUSTED, EXIT_LADDER_EXHAUSTED,
                   f"attempt {number} ran out of memory and {decision.reason} ({tried}). " + (
                       f"No attempt finished a step under the memory cap of {format_size(memory_cap)}: if that is "
                       f"not the size you meant, give --memory-cap with its unit (1200MiB, 16GiB); otherwise try a "
                       f"bigger cap, a smaller model or sequence, or a ladder with more rungs."
                       if memory_cap and not any(a.steps for a in view.attempts) else
                       "Try a bigger device, a smaller model or sequence, or a ladder with more rungs."),
                   decision, rollback)
    return Climb(decision.plan, decision, rollback)


def roll_back(view: RunView, error: Failure, ladder: Ladder, memory_cap: int | None,
              several_nodes: bool) -> Climb | End | None:
    """A rung that turned a working program into a failing one is undone, not blamed on the program.

    It applies when the last attempt failed with an error (not memory) right after a rung changed the
    plan, and the attempt before it ran out of memory (so the ladder climbed from a plan that worked up
    to then) and got at least as far: up to the step its OOM struck in. A true bug still stops the run:
    the same error as before, or an error at a step the earlier plan never reached. `error` is the last
    attempt's failure.
    """
    if len(view.attempts) < 2:
        return None
    broken, before = view.attempts[-1], view.attempts[-2]
    decision = next((d for d in reversed(view.decisions) if d.attempt == before.number), None)
    if decision is None or not decision.rung_indices or before.failure is None or not before.failure.is_memory:
        return None
    if error.summary == before.failure.summary:
        return None
    # The earlier plan reached the step its OOM struck in: an error anywhere in that step, its end included
    # (where the step count has already moved on), is at a point that plan got to.
    reached = max(before.step or 0, before.failure.step or 0, before.steps.last or 0) + 1
    if (error.step or 0) > reached:
        return None  # a point the earlier plan never reached: the program's own bug, as far as anyone can tell
    used = [i for i in decision.rung_indices if 0 <= i < len(ladder.rungs)]
    suspects = [i for i in used if ladder.rungs[i].strategy.changes_code] or used
    rollback = Rollback(broken.number, tuple((ladder.rungs[i].name, i, error.summary) for i in suspects))
    # The view as it was before the broken attempt: its plan and rung uses are undone.
    earlier = view.without(broken.number)
    return _climb(earlier, ladder, memory_cap, several_nodes, before.failure, rollback)


def _stop_exit_code(returncode: int | None) -> int:
    """128 + the signal that stopped the worker, as a shell reports it."""
    return EXIT_INTERRUPTED.get(signal_of(returncode) or signal.SIGINT, 130)


def stopped(stop: StopReason) -> End:
    """The end of a run whose worker group the supervisor (or another node) stopped."""
    if stop.kind is Stop.SIGNAL and stop.signum is not None:
        return End(RunStatus.INTERRUPTED, EXIT_INTERRUPTED.get(stop.signum, 130),
                   f"oomladder received {signal.Signals(stop.signum).name}; the worker group was stopped. Run the "
                   f"same command again (or oomladder resume) to continue.")
    if stop.kind is Stop.BUDGET and stop.budget is not None:
        return End(RunStatus.BUDGET_EXHAUSTED, EXIT_BUDGET,
                   f"the {stop.budget.flag} budget ({stop.budget.text}) ran out during an attempt; its worker group "
                   f"was stopped. Run the same command again to continue.")
    peer = stop.peer
    assert peer is not None  # a StopReason of kind PEER holds one
    return End(peer.status, peer.exit_code, f"node {peer.node} was stopped ({peer.why}), and this "
               f"node's group with it. Run the same command on every node to continue.")


def over_budget(spent: Budget | None, next_rung: str | None) -> End | None:
    """Between attempts: the run ends here if a budget is spent."""
    if spent is None:
        return None
    return End(RunStatus.BUDGET_EXHAUSTED, EXIT_BUDGET,
               f"the {spent.flag} budget ({spent.text}) is spent; the next attempt would have been: {next_rung}. "
               f"Run the same command again to continue.")


def streak(view: RunView, kind: Kind) -> int:
    """How many attempts in a row, up to the last, died of `kind`."""
    count = 0
    for attempt in reversed(view.attempts):
        if attempt.failure is None or attempt.failure.kind is not kind:
            break
        count += 1
    return count


def finished_reason(view: RunView) -> str:
    """What a finished run did, as the workers' step reports show it: "every step ran once" only then."""
    ooms = sum(1 for a in view.attempts if a.failure is not None and a.failure.is_memory)
    done = f"attempt {view.attempts[-1].number} finished"
    if ooms:
        done += f" after {ooms} out-of-memory error{'s' if ooms > 1 else ''}"
    in_place = sum(len(a.recovered_in_place) for a in view.attempts)
    if in_place:
        done += f"; {in_place} out-of-memory error{'s' if in_place > 1 else ''} recovered in place, without a relaunch"
    if not view.steps_reported:
        text = (f"{done}; the program reports no optimizer steps to oomladder, so whether any step ran twice "
                f"is not known")
    elif not view.steps_exact:
        text = (f"{done}; the program's step numbers are too sparse to check one by one (it may report samples, not "
                f"optimizer steps)")
    elif view.repeated_steps:
        text = (f"{done}, but steps {format_steps(view.repeated_steps)} ran more than once: an attempt trained "
                f"them again instead of resuming (lost work)")
    elif view.missing_steps:
        text = f"{done}, but no attempt reported running steps {format_steps(view.missing_steps)}"
    else:
        text = f"every step ran once; {done}"
    batch = view.final_plan.effective_batch
    return text + (f"; effective batch {batch} throughout" if batch else "")


def reached_plan(view: RunView) -> Plan:
    """The plan a continued run starts on: the last decision's, or the last attempt's."""
    last = view.decisions[-1] if view.decisions else None
    if last and last.plan is not None and (not view.attempts or last.attempt >= view.attempts[-1].number):
        return last.plan
    return view.attempts[-1].plan if view.attempts else Plan()


def evaluation_owed(view: RunView, resume_step: int | None) -> int | None:
    """The step whose evaluation an OOM cut short, if the next attempt resumes right there (`resume_step`: the
    step its checkpoint ended, None without one)."""
    last = view.attempts[-1] if view.attempts else None
    failure = last.failure if last else None
    if resume_step is not None and failure is not None and failure.phase == "eval" and failure.step == resume_step:
        return failure.step
    return None


def cap_warning(memory_cap: int | None) -> str | None:
    """A cap no model fits in is a unit forgotten far more often than a device that small: said at the start."""
    if memory_cap and memory_cap < SMALLEST_MODEL:
        return (f"the memory cap, {format_size(memory_cap)}, is far under any model: every attempt will run out of "
                f"memory. Check --memory-cap's unit (1200MiB, 16GiB)")
    return None


def arithmetic(view: RunView, decision: Decision, memory_cap: int | None) -> list[str]:
    """What `--verbose` shows of a decision just journaled: the error's own numbers, what the estimator computed
    for the plan that failed and for the next (memory/foresight.py), with its calibration and where the estimated
    peak goes, and why each rung left out was left out. It changes nothing of what is decided."""
    failure = view.attempts[-1].failure if view.attempts else None
    lines = ["the error's numbers: " + ", ".join(f"{name.replace('_', ' ')} {format_size(value)}"
                                                for name, value in failure.numbers.items())
             ] if failure is not None and failure.numbers else []
    said = decision.estimate or _estimated(view, decision, memory_cap)
    if said is None:
        lines.append("no estimate: the program did not report its model's shape, or there is no device size to fit "
                     "in (no --memory-cap, and not a CUDA device): the ladder's next rung, one at a time")
    else:
        batch: Sequence[int] = said.get("batch") or ()
        at = f" at micro-batch {batch[0]} x {batch[1]} tokens" if len(batch) == 2 else ""
        offset = said.get("calibration") or 0
        lines += [f"estimated peak{at}: {format_size(said['before'])} for the plan that failed, "
                  f"{format_size(said['after'])} for the next, against {format_size(said['capacity'])} usable",
                  f"calibration: {'+' if offset >= 0 else '-'}{format_size(abs(offset))} on the arithmetic (what "
                  f"it missed, from this run's measured peaks and out-of-memory errors)"]
        split = {name: size for name, size in (said.get("split") or {}).items() if size}
        if split:
            lines.append("where the estimated peak of the plan that failed goes: " + ", ".join(
                f"{name} {format_size(size)}" for name, size in split.items()))
    return lines + [f"left out: {name}: {why}" for name, why in decision.skipped]


def _estimated(view: RunView, decision: Decision, memory_cap: int | None) -> dict[str, Any] | None:
    """A decision of one rung journals no estimate: the loop's own yardstick, for the same two plans."""
    fit = fit_for(view, memory_cap) if view.attempts and decision.plan is not None else None
    if not isinstance(fit, Fit) or decision.plan is None:
        return None
    failed = view.attempts[-1].plan
    before, after, guess = fit.need(failed), fit.need(decision.plan), fit.estimate(failed)
    if before is None or after is None:
        return None
    return {"before": before, "after": after, "capacity": fit.capacity, "calibration": fit.offset,
            "batch": list(fit.batch), "split": dict(guess.split) if guess else None}
