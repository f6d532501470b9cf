"""What a notification says (`--notify`): short text for a phone's lock screen or a chat channel,
when the ladder takes a fallback and when the run ends.

Pure: the RunView in, a title and a few lines out; run/notify.py sends them. The outcome comes
first, then the steps done, what the plan changed, and where the report is, so the message alone
tells whether to get up.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from oomladder.plan import describe_changes
from oomladder.record.history import RunView
from oomladder.record.records import InPlaceRecord
from oomladder.status import RunStatus
from oomladder.views.table import status_text

# The outcome of a run as a message's title says it.
OUTCOMES = {
    RunStatus.FINISHED: "training finished",
    RunStatus.LADDER_EXHAUSTED: "out of memory, ladder exhausted",
    RunStatus.NOT_MEMORY: "stopped by a bug (no memory setting fixes it)",
    RunStatus.INTERRUPTED: "interrupted",
    RunStatus.BUDGET_EXHAUSTED: "stopped: a budget ran out",
    RunStatus.HANG: "stopped: the worker hung twice",
    RunStatus.TRANSIENT: "stopped: an infrastructure failure kept coming back",
    RunStatus.LAUNCH_FAILED: "stopped: the command could not be started",
    RunStatus.NODE_LOST: "stopped: a node was lost",
    RunStatus.NODES_DISAGREE: "stopped: the nodes disagree about the run",
    RunStatus.RUNNING: "oomladder stopped before the run ended (its journal is kept)",
}
COMMAND_WIDTH = 160


@dataclass(frozen=True)
class Message:
    title: str
    body: str
    level: str  # info | success | warning | failure: how a service may colour it (Apprise's notify types)


def fallback_message(view: RunView, failed: int, where: str) -> Message:
    """Attempt `failed` ran out of memory and the ladder chose the next plan (the last decision)."""
    attempt = next(a for a in view.attempts if a.number == failed)
    decision = next(d for d in reversed(view.decisions) if d.attempt == failed)
    title = f"oomladder: attempt {failed} ran out of memory; next: {decision.rung}"
    died = status_text(attempt) + (f": {attempt.failure.summary}" if attempt.failure else "")
    lines = [f"{died}.", f"Next: {decision.rung}, changing {decision.changes or '-'}.",
             _steps_done(view), where]
    return Message(title, "\n".join(lines), "warning")


def in_place_message(view: RunView, attempt: int, record: InPlaceRecord, where: str) -> Message:
    """Attempt `attempt` ran out of memory and recovered in place (worker/recovery/in_place.py): a fallback too,
    without a relaunch, so people who asked to hear of fallbacks hear of it."""
    step, rows, split = record.step, record.rows, record.split
    title = f"oomladder: attempt {attempt} ran out of memory in step {step}; recovered in place"
    turned = "Gradient checkpointing was turned on. " if record.turned_on_checkpointing else ""
    chunks = (f"The micro-batch of {rows} now runs in {split} chunks, their gradients accumulated: the step and the "
              f"effective batch are unchanged." if split > 1 else "The micro-batch runs whole.")
    if record.per_step:
        chunks = (f"That step's micro-batch of {rows} ran in {split} chunks, their gradients accumulated: the step and "
                  f"the effective batch are unchanged. Later steps are sized before they run.")
    return Message(title, "\n".join([f"{turned}{chunks}", "No relaunch.", _steps_done(view), where]), "warning")


def end_message(view: RunView, report: Path, where: str) -> Message:
    status = view.status
    title = f"oomladder: {OUTCOMES.get(status, status.value.replace('_', ' '))}"
    lines = []
    if view.ended and view.ended.reason:
        lines.append(f"{view.ended.reason}.")
    last = view.attempts[-1] if view.attempts else None
    if last is not None and last.failure is not None and status is not RunStatus.FINISHED:
        lines.append(f"Attempt {last.number}: {status_text(last)}.")
    ooms = sum(1 for a in view.attempts if a.failure is not None and a.failure.is_memory)
    lines.append(_steps_done(view) + f" Attempts: {len(view.attempts)}, {ooms} out of memory.")
    changed = describe_changes(view.program_plan, view.final_plan)
    lines.append(f"Final plan: {changed if changed != '-' else 'the program’s own settings'}.")
    lines += [f"Report: {report}", where]
    return Message(title, "\n".join(lines), "success" if status is RunStatus.FINISHED else "failure")


def whereabouts(view: RunView, run_dir: Path, host: str) -> str:
    """`Run: python train.py --config my.yaml, on gpu-node-3, in runs/llama-lora`."""
    command = shlex.join(view.run.get("command") or [])
    if len(command) > COMMAND_WIDTH:
        command = command[: COMMAND_WIDTH - 1] + "…"
    return f"Run: {command}, on {host}, in {run_dir}"


def _steps_done(view: RunView) -> str:
    reached = max((a.step for a in view.attempts if a.step is not None), default=None)
    total = next((a.max_steps for a in reversed(view.attempts) if a.max_steps), None)
    if reached is None:
        return "Steps done: none reported."
    return f"Steps done: {reached}" + (f" of {total}." if total else ".")
