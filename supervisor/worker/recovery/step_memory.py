"""A memory model of the running step, in the training process: what a micro-step of `rows` rows of `seq` tokens
will take on top of what the process holds when it begins, learned from the micro-steps it has measured.

Split ahead (in_place.py) asks it before each micro-step which split fits. It predicts a micro-step's extra memory
as `k * f(rows, seq) + c`:

- `f` is the estimator's (memory/estimate.py) activations and logits for that workload, from the model's real
  shape (probe.model_report): what grows with the rows, the tokens and, under eager attention, the tokens squared.
  Without a shape (a model that is not a language model), `f` is the tokens, and the model is empirical.
- `k` and `c` start at 1 and 0 (the estimator's word), and are fitted to the micro-steps measured since (each
  shape's latest; the first, with its one-time allocations, only until there is another): while
  the steps measured are all of one size, the estimator's slope with what it left out as a constant; once they
  differ, the least-squares line through them, raised by its worst miss. An OOM is a lower bound: the micro-step
  needed more than was available, and `k` grows to say so.
- The budget is what the emulated device has left (the cap less what the process holds) or, on CUDA, what the
  allocator can still hand out; a margin, 5 % to begin with, grows with each OOM the model did not foresee.

Measured per micro-step: on CUDA, `max_memory_allocated` after `reset_peak_memory_stats`; on the CPU, the resident
high-water mark after `/proc/self/clear_refs` resets it (the address space a capped worker counts is resident: its
large blocks are mapped per allocation and written). memcap keeps the attempt's own peak across the resets.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from oomladder.worker.hooks import memcap

MARGIN = 0.05           # of the budget, kept free to begin with
SAMPLES = 64            # the micro-steps the fit remembers (recent shapes matter most)


def enabled() -> bool:
    """Split ahead is on unless the supervisor (--no-split-ahead) or the environment turns it off."""
    return os.environ.get("OOMLADDER_SPLIT_AHEAD", "1") != "0"


@dataclass
class StepMemory:
    """The fitted model. `feature(rows, seq)` is f; None where the shape is not known."""

    feature: Callable[[int, int], float]
    seeded: bool                                   # f is the estimator's: k=1, c=0 is a prediction already
    samples: deque = field(default_factory=lambda: deque(maxlen=SAMPLES))  # (f, measured extra), oldest first
    measured: int = 0                              # micro-steps observed, the dropped ones included
    bounds: list = field(default_factory=list)     # (f, extra it exceeded): OOMs
    margin: float = MARGIN
    k: float = 1.0
    c: float = 0.0

    def predict(self, rows: int, seq: int) -> int | None:
        """Bytes the micro-step will take over what is held when it begins; None before it can say."""
        if not self.seeded and not self.samples and not self.bounds:
            return None
        return int(self.k * self.feature(rows, seq) + self.c)

    def fits(self, rows: int, seq: int, available: int) -> bool | None:
        predicted = self.predict(rows, seq)
        return None if predicted is None else predicted <= available * (1 - self.margin)

    def observe(self, rows: int, seq: int, extra: int) -> None:
        """A micro-step of `rows` x `seq` took `extra` bytes over what was held when it began (the fit takes it in:
        a step that fitted does not widen the margin, only one that ran out does).

        A shape's latest measurement replaces its earlier ones, and the model's first one is dropped once another
        exists: the first micro-step also allocates what every later one finds already held (the allocator's heap,
        library pages touched once), which the fit would keep as a constant and split every step finer by."""
        f = self.feature(rows, seq)
        kept = list(self.samples)[1:] if self.measured == 1 else list(self.samples)
        self.samples = deque([*((g, e) for g, e in kept if g != f), (f, extra)], maxlen=SAMPLES)
        self.measured += 1
        self._fit()

    def ran_out(self, rows: int, seq: int, available: int | None, predicted: int | None) -> None:
        """A micro-step of `rows` x `seq` ran out of memory with `available` bytes left for it: it needed more.
        Where the model had said it fits, the margin grows too."""
        if available is None:
            return
        if predicted is not None and predicted < available:
            self.margin = min(0.5, max(self.margin, (available - predicted) / available + MARGIN))
        self.bounds.append((self.feature(rows, seq), available))
        self._fit()

    def _fit(self) -> None:
        """k and c: the least-squares line through the measured points where their f differ (a ratio of one point
        would count what does not grow with the tokens as if it did, and over-split long steps), the largest ratio
        where they do not; and never below what an OOM proved."""
        points = [(f, e) for f, e in self.samples if f > 0]
        k, c = self.k, self.c
        if points and self.seeded:  # the estimator's slope, what it leaves out as a constant (or a smaller slope)
            k = min(1.0, min(e / f for f, e in points))
            c = max(0.0, max(e - k * f for f, e in points))
        elif points:
            k, c = max(e / f for f, e in points), 0.0
        if len({f for f, _ in points}) >= 2:
            n = len(points)
            mf, me = sum(f for f, _ in points) / n, sum(e for _, e in points) / n
            k = max(0.0, sum((f - mf) * (e - me) for f, e in points) / sum((f - mf) ** 2 for f, _ in points))
            c = max(0.0, me - k * mf)
            # Raised by the line's worst miss, so that no step it measured is under-predicted (a constant: noise at a
            # short step must not steepen the line for the long ones).
            c += max(0.0, max(e - (k * f + c) for f, e in points))
        proved = [(b - c) / f for f, b in self.bounds if f > 0]
        self.k, self.c = max([k, *proved]), c


def model_of(report: dict[str, Any] | None, plan: dict[str, Any], trainer: str | None = None) -> StepMemory:
    """The step's memory model for a model report (probe.model_report) and the attempt's plan."""
    if not report:
        return StepMemory(feature=lambda rows, seq: float(rows * seq), seeded=False)
    from oomladder.memory.estimate import Workload, estimate
    from oomladder.memory.shape import ModelShape
    from oomladder.plan import Plan
    try:
        shape = ModelShape.from_dict(report["shape"])
        fields = {k: v for k, v in plan.items() if k in Plan.__dataclass_fields__}
        the_plan = Plan.from_dict(fields)
    except Exception:  # noqa: BLE001 - a report from another version: the empirical model
        return StepMemory(feature=lambda rows, seq: float(rows * seq), seeded=False)
    device = "cuda" if memcap.info().get("mode") == "cuda_fraction" else "cpu"

    def feature(rows: int, seq: int) -> float:
        work = Workload(rows, seq, bool(report.get("adapters")), int(report.get("trainable_params") or 0),
                        tuple(report.get("lora_targets") or ()), loads_from_file=False, trainer=trainer)
        parts = estimate(shape, the_plan, work, device).parts
        return float(parts["activations"] + parts["logits"])

    return StepMemory(feature=feature, seeded=True)


class Measure:
    """One micro-step's extra memory: begin before it, read after it (or after its OOM)."""

    def __init__(self) -> None:
        self.held_at_start = memcap.step_begin()

    def extra(self) -> int | None:
        peak = memcap.step_peak()
        return None if peak is None or self.held_at_start is None else max(0, peak - self.held_at_start)
