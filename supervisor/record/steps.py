"""Sets of optimizer steps kept as ranges, and a bounded log of when each step ended: what the fold keeps of an
attempt's steps, whatever their number. A run of 10 million steps in order is one range, not 10 million
entries, and a step number of a trillion costs what step 1 costs.

Pure: no files or clocks.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Any

RANGES_KEPT = 4096  # past twice this many ranges, the closest ones merge: a set's size stays bounded


class StepSet:
    """Optimizer step numbers as sorted, disjoint, non-adjacent ranges `[first, last]`, both ends included.

    Adding the next step in order extends the last range in constant time; a step out of order costs a binary
    search. Iterating yields every step (tests and small sets only: the views use `ranges`).

    A program whose step numbers are sparse (one that reports samples seen: 16, 32, 48...) would make a range
    of each; past `2 * RANGES_KEPT` ranges the closest ones merge into `RANGES_KEPT`, and the set is no longer
    `exact`: its ranges then also hold numbers nobody reported, and only its widest gaps are left."""

    __slots__ = ("_firsts", "_lasts", "_count", "exact")

    def __init__(self, steps: Iterable[int] = ()) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        self._count = 0
        self.exact = True
        for step in steps:
            self.add(step)

    @classmethod
    def of_ranges(cls, ranges: Iterable[tuple[int, int] | list[int]]) -> StepSet:
        out = cls()
        for first, last in ranges:
            out.add_range(first, last)
        return out

    def add(self, step: int) -> None:
        if self._lasts and self._lasts[-1] + 1 == step:  # the next step in order: the common case
            self._lasts[-1] = step
            self._count += 1
            return
        self.add_range(step, step)

    def add_range(self, first: int, last: int) -> None:
        if last < first:
            return
        if not self._firsts or first > self._lasts[-1] + 1:
            self._firsts.append(first)
            self._lasts.append(last)
            self._count += last - first + 1
            if len(self._firsts) > 2 * RANGES_KEPT:
                self._coarsen()
            return
        # The ranges that touch or overlap [first - 1, last + 1] merge with it.
        lo = bisect.bisect_left(self._lasts, first - 1)
        hi = bisect.bisect_right(self._firsts, last + 1)
        if lo < hi:
            first, last = min(first, self._firsts[lo]), max(last, self._lasts[hi - 1])
            self._count -= sum(b - a + 1 for a, b in zip(self._firsts[lo:hi], self._lasts[lo:hi]))
        self._firsts[lo:hi] = [first]
        self._lasts[lo:hi] = [last]
        self._count += last - first + 1
        if len(self._firsts) > 2 * RANGES_KEPT:
            self._coarsen()

    def _coarsen(self) -> None:
        """Merge across the narrowest gaps until `RANGES_KEPT` ranges are left."""
        gaps = sorted(range(len(self._firsts) - 1), key=lambda i: self._firsts[i + 1] - self._lasts[i])
        closing = set(gaps[: len(self._firsts) - RANGES_KEPT])
        firsts, lasts = [self._firsts[0]], []
        for i in range(len(self._firsts) - 1):
            if i not in closing:
                lasts.append(self._lasts[i])
                firsts.append(self._firsts[i + 1])
        lasts.append(self._lasts[-1])
        self._firsts, self._lasts, self.exact = firsts, lasts, False
        self._count = sum(b - a + 1 for a, b in zip(firsts, lasts))

    def update(self, other: StepSet) -> None:
        self.exact = self.exact and other.exact
        if other and (not self or other._firsts[0] > self._lasts[-1] + 1):  # all after: appended as they are
            self._firsts += other._firsts
            self._lasts += other._lasts
            self._count += other._count
            if len(self._firsts) > 2 * RANGES_KEPT:
                self._coarsen()
            return
        for first, last in other.ranges():
            self.add_range(first, last)

    def difference(self, other: StepSet) -> StepSet:
        """The steps of this set that are not in `other`, in one pass over both."""
        out, theirs, j = StepSet(), other.ranges(), 0
        out.exact = self.exact
        for first, last in self.ranges():
            while j < len(theirs) and theirs[j][1] < first:
                j += 1
            k = j
            while k < len(theirs) and theirs[k][0] <= last:
                if theirs[k][0] > first:
                    out.add_range(first, theirs[k][0] - 1)
                first = max(first, theirs[k][1] + 1)
                k += 1
            if first <= last:
                out.add_range(first, last)
        return out

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._firsts, self._lasts))

    def intersection(self, other: StepSet) -> StepSet:
        out, theirs, j = StepSet(), other.ranges(), 0
        out.exact = self.exact and other.exact
        for first, last in self.ranges():
            while j < len(theirs) and theirs[j][1] < first:
                j += 1
            k = j
            while k < len(theirs) and theirs[k][0] <= last:
                out.add_range(max(first, theirs[k][0]), min(last, theirs[k][1]))
                k += 1
        return out

    def gaps(self, start: int = 1) -> StepSet:
        """The steps from `start` up to this set's last that are not in it."""
        out, expected = StepSet(), start
        out.exact = self.exact
        for first, last in self.ranges():
            if first > expected:
                out.add_range(expected, first - 1)
            expected = max(expected, last + 1)
        return out

    @property
    def first(self) -> int | None:
        return self._firsts[0] if self._firsts else None

    @property
    def last(self) -> int | None:
        return self._lasts[-1] if self._lasts else None

    def to_json(self) -> list[list[int]]:
        return [[first, last] for first, last in self.ranges()]

    def __contains__(self, step: object) -> bool:
        if not isinstance(step, int):
            return False
        i = bisect.bisect_right(self._firsts, step) - 1
        return i >= 0 and step <= self._lasts[i]

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return bool(self._firsts)

    def __iter__(self) -> Iterator[int]:
        for first, last in self.ranges():
            yield from range(first, last + 1)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StepSet):
            return self.ranges() == other.ranges()
        if isinstance(other, (list, tuple, set, frozenset, range)):
            return len(other) == self._count and list(self) == sorted(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"StepSet({self.to_json()})"


class StepLog:
    """When each step an attempt ran was journaled, and the highest peak any rank reported at its end: what the
    report's charts and the live pace read. Kept to at most `limit` steps: past that, every other one is
    dropped, its peak kept in the step before it, so the chart still shows the highest peak of each stretch."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self.times: dict[int, float] = {}
        self.peaks: dict[int, int] = {}

    def add(self, step: int, ts: Any, peak: Any) -> None:
        if step not in self.times and ts is not None:
            self.times[step] = ts
        if peak is not None and step in self.times:
            self.peaks[step] = max(self.peaks.get(step, 0), peak)
        if len(self.times) > self.limit:
            self._thin()

    def _thin(self) -> None:
        steps = sorted(self.times)
        kept = set(steps[::2]) | {steps[-1]}
        for i, step in enumerate(steps):
            if step in kept:
                continue
            keeper = steps[i - 1]
            if step in self.peaks:
                self.peaks[keeper] = max(self.peaks.get(keeper, 0), self.peaks.pop(step))
            del self.times[step]
