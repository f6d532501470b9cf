"""The words every rendering of the report shares: how a run's status and its step accounting read, what split
ahead did, and the journal's identifiers as a person reads them on a page (how a peak was measured,
worker/hooks/memcap.py; what kind of failure ended an attempt, classify.Kind). An identifier not listed reads with its
underscores as spaces, never as code."""


from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oomladder.status import RunStatus
from oomladder.units import format_size, format_steps
from oomladder.views.table import in_place_line

STATUS_TEXT = {
    RunStatus.FINISHED: "Training finished.",
    RunStatus.LADDER_EXHAUSTED: "Stopped: out of memory, and no rung of the ladder was left to try.",
    RunStatus.BUDGET_EXHAUSTED: "Stopped: a budget (--max-attempts or --max-wall-time) ran out.",
    RunStatus.HANG: "Stopped: the worker hung, and hung again on the retry.",
    RunStatus.TRANSIENT: "Stopped: the same infrastructure failure kept coming back after the retries.",
    RunStatus.NOT_MEMORY: "Stopped: the worker failed for a reason no memory setting fixes.",
    RunStatus.INTERRUPTED: "Stopped: interrupted.",
    RunStatus.LAUNCH_FAILED: "Stopped: the command could not be started.",
    RunStatus.NODE_LOST: "Stopped: another node's supervisor went silent.",
    RunStatus.NODES_DISAGREE: "Stopped: the nodes' supervisors disagreed about the run.",
    RunStatus.DISK_FULL: "Stopped: the disk holding the run directory is full.",
    RunStatus.INTERNAL_ERROR: "Stopped: oomladder itself failed (the journal keeps the error).",
    RunStatus.RUNNING: "Still running (or the supervisor died): `oomladder report` shows the journal as it stands.",
}


def steps_line(steps: dict[str, Any], strong=lambda text: f"**{text}**") -> str:
    if not steps["reported"]:
        return "not reported by the program (no adapter reached it), so repeats cannot be counted"
    parts = []
    if steps["repeated"]:
        parts.append(strong(f"{format_steps(steps['repeated'])} ran more than once") + " (lost work)")
    if steps["missing"]:
        parts.append(strong(f"{format_steps(steps['missing'])} never reported"))
    if not steps.get("exact", True):
        parts.append("the program's step numbers are too sparse to check one by one (it may count samples, not "
                     "optimizer steps)")
    return "; ".join(parts) or "each ran once, as the workers reported"


def journal_damage(journal: dict[str, Any]) -> str | None:
    """What the journal's reading stepped over, named line by line (the first ones), or None:
    `lines that are not records: 4; records that could not be read: 2 (line 5: step is 2.5; line 6: ...)`."""
    unreadable, malformed = journal.get("unreadable_lines") or [], journal.get("malformed_records") or 0
    if not unreadable and not malformed:
        return None
    named = "; ".join(f"line {d.get('line')}: {d.get('why')}" for d in (journal.get("damaged") or [])[:10])
    return (f"lines that are not records: {', '.join(map(str, unreadable[:20])) or 'none'}; records that could not "
            f"be read: {malformed}" + (f" ({named}{'; …' if malformed > 10 else ''})" if named else ""))


def split_ahead_line(summary: dict[str, Any] | None) -> str | None:
    """What split ahead did, in a sentence: `4 steps ran in chunks (up to 2), sized before they ran; each step's
    predicted peak was within +3 % of the measured one (median), +8 % at worst; no OOM it did not foresee`."""
    if not summary:
        return None
    parts = []
    if summary.get("steps_split"):
        count = summary["steps_split"]
        parts.append(f"{count} step{'s' if count != 1 else ''} ran in chunks (up to {summary.get('widest')}), sized "
                     f"before they ran")
    else:
        parts.append("no step needed splitting")
    if summary.get("error_median") is not None:
        parts.append(f"each step's predicted peak against the measured one: {summary['error_median']:+.0%} "
                     f"(median), {summary['error_worst']:+.0%} at worst")
    missed = summary.get("mispredictions") or 0
    parts.append(f"{missed} OOM{'s' if missed != 1 else ''} it did not foresee, each met in place" if missed
                 else "no OOM it did not foresee")
    return "; ".join(parts)

MEASURES = {
    "cuda_max_allocated": "the most memory PyTorch's CUDA allocator had handed out at once",
    "address_space_over_baseline": "the address space the program grew by after its imports, which the CPU "
                                   "emulation of a device caps",
    "allocated_over_baseline": "the memory the program's allocations grew by after its imports, which the CPU "
                               "emulation of a device caps (--cpu-cap allocator)",
    "rss_over_baseline": "the resident memory the program grew by after its imports",
    "max_rss": "the program's peak resident memory",
}

FAILURES = {
    "cuda_oom": "out of memory on the GPU (PyTorch's CUDA allocator)",
    "cuda_driver_oom": "out of memory in a CUDA kernel or the driver",
    "cublas_alloc": "cuBLAS could not allocate its workspace",
    "cudnn_alloc": "cuDNN could not allocate its workspace",
    "nccl_oom": "NCCL ran out of memory",
    "mps_oom": "out of memory on Apple's GPU (MPS)",
    "hip_oom": "out of memory on the AMD GPU (HIP)",
    "xpu_oom": "out of memory on the Intel GPU (XPU)",
    "cpu_oom": "out of memory (PyTorch's CPU allocator)",
    "mmap_failed": "a checkpoint file could not be mapped into memory",
    "offloaded": "device_map put weights off the device",
    "onednn_primitive": "oneDNN had no memory left to build a kernel",
    "python_memory_error": "Python's MemoryError",
    "dataloader_killed": "a DataLoader worker was killed",
    "host_oom_kill": "killed by the kernel's out-of-memory killer",
    "killed": "killed (SIGKILL), with nothing to say why",
    "crashed": "crashed on a fatal signal",
    "interrupted": "interrupted from outside (SIGINT or SIGTERM)",
    "hang": "no progress (--hang-timeout)",
    "transient": "an infrastructure failure (a collective timed out, a connection reset)",
    "launch_failed": "the command could not be started",
    "error": "an error in the program",
    "unknown": "a non-zero exit, with nothing to say why",
}


def measure_words(measure: str) -> str:
    return MEASURES.get(measure, measure.replace("_", " "))


def failure_words(kind: str) -> str:
    return FAILURES.get(kind, kind.replace("_", " "))


def why_taken(a: dict[str, Any], esc: Callable[[Any], str], strong: Callable[[str], str],
              ) -> tuple[str, list[str], str | None]:
    """An attempt's entry under "Why each rung was taken", in the same words in report.md and report.html: its
    line (rung, reason, resume, skips), a line for each OOM met in place, and how it died (or None). `esc` makes
    a value inert in the format, `strong` emphasises text already made inert."""
    line = strong(f"{esc(a['number'])}. {esc(a['rung'])}") + f": {esc(a['reason'] or 'the program as it was given')}"
    if a["resume_missed"]:
        line += f"; {strong('did not resume')}: {esc(a['resume_missed'])}"
    elif a["resumed_from_step"]:
        line += f"; resumed from the end of step {esc(a['resumed_from_step'])}"
    if a["skipped"]:
        line += "; skipped: " + "; ".join(f"{esc(s['rung'])} ({esc(s['reason'])})" for s in a["skipped"])
    in_place = [esc(in_place_line(row)) for row in a.get("in_place") or ()]
    failure = a["failure"]
    if not failure:
        return line, in_place, None
    numbers = ", ".join(f"{k.replace('_', ' ')} {_size(v)}" for k, v in failure["numbers"].items()
                        if k != "tried_to_allocate")  # the summary says it already
    died = (f"died: {esc(failure_words(failure['kind']))}: {esc(failure['summary'])}"
            + (f" ({esc(numbers)})" if numbers else "")
            + (": the error came with this attempt's rung, which was rolled back; your program is not at fault"
               if a.get("rolled_back") else ""))
    return line, in_place, died


def _size(value: Any) -> str:
    """A size from the journal, or the value as it is where it is not one (an edited journal)."""
    try:
        return format_size(value)
    except (TypeError, ValueError, OverflowError):
        return str(value)
