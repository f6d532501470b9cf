"""What report.html's two charts show: each attempt's memory step by step against the line it had
to stay under, and where the night's wall-clock time went.

Pure: report data (build_report's) in, the numbers to draw out, so what a chart says is tested
without drawing it. plots.py draws them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from oomladder.status import AttemptOutcome
from oomladder.units import format_size


@dataclass(frozen=True)
class Line:
    """One attempt's per-step peak: the steps its workers ran, and the peak at the end of each."""

    attempt: int
    label: str
    steps: list[int]
    peaks: list[int]


@dataclass(frozen=True)
class OomMark:
    """Where an out-of-memory error struck: the step, the peak before the failed allocation, and what
    it tried to allocate on top (the failed allocation reached `peak + tried`)."""

    attempt: int
    step: int | None
    peak: int | None
    tried: int | None
    in_evaluation: bool = False

    @property
    def reached(self) -> int | None:
        return None if self.peak is None else self.peak + (self.tried or 0)


@dataclass(frozen=True)
class MemoryChart:
    lines: list[Line]
    ooms: list[OomMark]
    limit: int | None         # the memory cap, or the device's memory where there is no cap
    limit_label: str
    peaks: dict[int, int | None] = field(default_factory=dict)  # each attempt's peak, for a program without steps

    @property
    def by_step(self) -> bool:
        """The workers reported their steps; otherwise each attempt is one bar of its peak."""
        return any(line.steps for line in self.lines)


def memory_chart(report: dict[str, Any]) -> MemoryChart:
    lines, ooms = [], []
    for a in report["attempts"]:
        points = [(s["step"], s["peak"]) for s in a["step_log"] if s["peak"] is not None]
        lines.append(Line(a["number"], attempt_label(a), [s for s, _ in points], [p for _, p in points]))
        failure = a["failure"]
        if failure and failure.get("memory"):
            evaluating = failure.get("phase") == "eval"
            step = failure.get("step")
            # `step` is the last whole step: a training OOM struck in the step after it.
            at = None if step is None else step if evaluating else step + 1
            ooms.append(OomMark(a["number"], at, a["peak"], (failure.get("numbers") or {}).get("tried_to_allocate"),
                                evaluating))
    if report.get("memory_cap"):
        limit, label = report["memory_cap"], f"memory cap {format_size(report['memory_cap'])}"
    elif report.get("device_memory"):
        limit, label = report["device_memory"], f"device memory {format_size(report['device_memory'])}"
    else:
        limit, label = None, "no cap"
    return MemoryChart(lines, ooms, limit, label, {a["number"]: a["peak"] for a in report["attempts"]})


@dataclass(frozen=True)
class Span:
    """A stretch of one attempt's wall-clock time, in seconds since the first attempt started."""

    start: float
    end: float
    kind: str  # "start-up" (launch, load, resume) | "training" | "lost" (after its last whole step, to its death)


@dataclass(frozen=True)
class Lane:
    attempt: int
    label: str
    spans: list[Span]
    steps: list[tuple[int, float]]  # (step, when it was journaled), seconds since the first start
    status: str
    steps_text: str


@dataclass(frozen=True)
class TimelineChart:
    lanes: list[Lane]
    total: float             # seconds from the first attempt's start to the last one's end
    lost_to_failures: float
    lost_to_restarts: float


def timeline_chart(report: dict[str, Any]) -> TimelineChart:
    attempts = report["attempts"]
    if not attempts:
        return TimelineChart([], 0.0, 0.0, 0.0)
    origin = attempts[0]["started_at"]
    lanes, latest = [], 0.0
    for a in attempts:
        steps = [(s["step"], s["at"] - origin) for s in a["step_log"]]
        began = a["training_began_at"]
        start = a["started_at"] - origin
        work_from = start if began is None else began - origin
        last_step = steps[-1][1] if steps else None
        end = (a["ended_at"] - origin) if a["ended_at"] is not None else (last_step if last_step is not None else
                                                                           work_from)
        spans = [Span(start, work_from, "start-up")] if work_from > start else []
        if a["status"] == AttemptOutcome.FAILED:
            lost_from = last_step if last_step is not None else work_from
            if lost_from > work_from:
                spans.append(Span(work_from, lost_from, "training"))
            spans.append(Span(lost_from, end, "lost"))
        else:
            spans.append(Span(work_from, end, "training"))
        lanes.append(Lane(a["number"], attempt_label(a), spans, steps, a["status"], a["steps_text"]))
        latest = max(latest, end)
    lost = report["time_lost"]
    return TimelineChart(lanes, latest, lost["failures"], lost["restarts"])


def attempt_label(attempt: dict[str, Any], width: int = 30) -> str:
    """`2 bf16 + halve_batch`, shortened to fit beside a chart."""
    text = f"{attempt['number']} {attempt['rung']}"
    return text if len(text) <= width else text[: width - 1] + "…"


def clock(seconds: float) -> str:
    """`0:42`, `12:05`, `3:02:10`: wall-clock time since the run began, as the attempts table writes it."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
