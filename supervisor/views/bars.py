"""Two bars for the console, from the RunView: how far the running attempt has got (step / total,
steps per second, time left), shown under the live table, and each attempt's peak against the cap,
shown when the run ends.

Pure functions to rich renderables, like table.py; the rates come from when the journal took in
each step, so the bar tells what the supervisor saw, to a poll's accuracy.
"""

from __future__ import annotations

from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from oomladder.record.history import AttemptView, RunView
from oomladder.status import AttemptOutcome
from oomladder.units import format_size
from oomladder.views.table import format_duration

BAR_WIDTH = 30
PEAK_BAR_WIDTH = 24


def steps_per_second(attempt: AttemptView) -> float | None:
    """The attempt's pace: over the steps it ran, or from its training's start when it has run only one."""
    log = attempt.step_times  # a sample past a thousand steps: the pace is steps over time between its ends
    if len(log) >= 2:
        first, last = min(log), max(log)
        if log[last] > log[first]:
            return (last - first) / (log[last] - log[first])
    if len(log) == 1 and attempt.training_began is not None:
        at = next(iter(log.values()))
        if at > attempt.training_began:
            return 1 / (at - attempt.training_began)  # includes the first step's warm-up: a cautious pace
    return None


def seconds_left(attempt: AttemptView, now: float) -> float | None:
    """Time to the last step at the attempt's pace, less what has passed since its last step."""
    rate = steps_per_second(attempt)
    if rate is None or not attempt.max_steps or attempt.step is None:
        return None
    since_last = now - max(attempt.step_times.values())
    return max(0.0, (attempt.max_steps - attempt.step) / rate - since_last)


def running_progress(view: RunView, now: float) -> Table | None:
    """`attempt 2  ━━━━━━━━━━╸────  step 4/6  0.09 steps/s  1:02 left`, or None when no attempt is training."""
    attempt = view.attempts[-1] if view.attempts else None
    if attempt is None or attempt.status is not AttemptOutcome.RUNNING or not attempt.max_steps:
        return None
    done = attempt.step or 0
    rate, left = steps_per_second(attempt), seconds_left(attempt, now)
    grid = Table.grid(padding=(0, 2))
    grid.add_row(Text(f"attempt {attempt.number}", style="bold"),
                 ProgressBar(total=attempt.max_steps, completed=done, width=BAR_WIDTH),
                 Text(f"{'evaluating at' if attempt.phase == 'eval' else 'step'} {done}/{attempt.max_steps}"),
                 Text(f"{rate:.2f} steps/s" if rate is not None else "- steps/s", style="dim"),
                 Text(f"{format_duration(left)} left" if left is not None else "time left: -", style="dim"))
    return grid


def peak_bars(view: RunView) -> Table | None:
    """Each attempt's peak as a bar against the memory cap (or the device's memory, or, with neither, the
    largest peak), with what its OOM tried to allocate on top."""
    peaks = [a.peak for a in view.attempts if a.peak is not None]
    if not peaks:
        return None
    cap = view.run.get("memory_cap") or view.facts.device_memory
    limit = cap or max(peaks)
    against = (f"the memory cap, {format_size(cap)}" if view.run.get("memory_cap") else
               f"the device's memory, {format_size(cap)}" if cap else "the largest peak (no cap)")
    table = Table(title=f"Peak memory against {against}", title_justify="left", box=None, padding=(0, 1),
                  show_header=False)
    for attempt in view.attempts:
        if attempt.peak is None:
            table.add_row(str(attempt.number), attempt.rung or "start", "", "not reported", "")
            continue
        failure = attempt.failure
        oom = failure is not None and failure.is_memory
        style = "yellow" if oom else "red" if attempt.peak > limit else "green"
        tried = failure.numbers.get("tried_to_allocate") if failure is not None and oom else None
        note = f"OOM, {format_size(tried)} more tried" if tried else "OOM" if oom else ""
        table.add_row(str(attempt.number), attempt.rung or "start",
                      ProgressBar(total=limit, completed=min(attempt.peak, limit), width=PEAK_BAR_WIDTH,
                                  complete_style=style, finished_style=style),
                      Text(f"{format_size(attempt.peak)} ({attempt.peak / limit:.0%})", justify="right"),
                      Text(note, style="yellow" if oom else ""))
    return table
