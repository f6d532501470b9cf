"""What the workers left, into the journal: their observations, their progress, the OOMs they met in place, the
emergency checkpoint, and the warnings these call for.

Progress is journaled at a bounded rate: at each look, the first `PER_LOOK` lines of each rank are journaled as
they are, and the rest of that look become one record of step ranges (`bounded`, pure). A program that reports
a step every microsecond (3 million in 20 s) costs the journal a few hundred records a second, not its
millions, and the report is written in seconds after it ends.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from oomladder.classify import Evidence, classify
from oomladder.process.checkpoints import is_whole, remove_superseded
from oomladder.record import schema
from oomladder.record.checks import FIELDS, damage
from oomladder.record.journal import Journal
from oomladder.record.records import InPlaceRecord
from oomladder.record.steps import StepSet
from oomladder.run.config import RunConfig
from oomladder.run.trainers import trains_in
from oomladder.views.display import Display
from oomladder.views.table import in_place_change
from oomladder.worker.protocol.files import LINE_LIMIT, AttemptFiles, entries_of, in_place_record

PER_LOOK = 64  # progress lines of one rank journaled as they are at one look (four looks a second)
_KEPT = ("max_steps", "loss", "learning_rate", "phase", "peak_measure", "batch_shape")  # the last one's, in a sum


# The steps lines report executing, found without parsing each line (with the keys in either order): a flood's
# lines past the per-look budget cost a pass of a regular expression, not a JSON parse each.
_EXECUTED = (re.compile(r'"step":\s*(\d{1,18})\b[^\n]*"executed":\s*true'),
             re.compile(r'"executed":\s*true[^\n]*"step":\s*(\d{1,18})\b'))
_PEAK = re.compile(r'"peak":\s*(\d{1,18})\b')


@dataclass
class Sum:
    """The progress lines of one rank past `PER_LOOK` at one look: the steps they executed as ranges, the
    highest peak, and the last line's step and settings."""

    count: int = 0
    steps: StepSet = field(default_factory=StepSet)
    step: int | None = None
    last: dict[str, Any] = field(default_factory=dict)
    peak: int | None = None

    def add(self, text: str) -> None:
        """Lines of progress, as the worker wrote them."""
        self.count += text.count("\n")
        reports, found = text.count('"executed"'), 0
        for pattern in _EXECUTED:
            if found >= reports:
                break  # every line that says it executed a step has been read (the keys in the usual order)
            found_here = pattern.findall(text)
            found += len(found_here)
            steps = sorted(set(map(int, found_here)))
            if steps and steps[-1] - steps[0] + 1 == len(steps):  # in order without a gap: the common flood
                self.steps.add_range(steps[0], steps[-1])
            else:
                for step in steps:
                    self.steps.add(step)
        peak = max(map(int, _PEAK.findall(text)), default=None)
        if peak is not None and (self.peak is None or peak > self.peak):
            self.peak = peak
        last = next(entries_of(text.rstrip("\n").rsplit("\n", 1)[-1]), None)
        if last is not None:
            self.last = last
            if FIELDS["step"](last.get("step")):
                self.step = last["step"]

    def record(self, number: int, rank: int) -> dict[str, Any]:
        steps = {"executed": True, "steps": self.steps.to_json()} if self.steps else {}
        kept = {key: self.last[key] for key in _KEPT if self.last.get(key) is not None and FIELDS[key](self.last[key])}
        return {"attempt": number, "rank": rank, "summed": self.count, **steps, **kept,
                **({"step": self.step} if self.step is not None else {}),
                **({"peak": self.peak} if self.peak is not None else {})}


@dataclass(frozen=True)
class Look:
    """What one look at the workers' progress files journals, in order: ("progress", fields) or ("in_place",
    rank, record) for each line kept as it is, then a progress record per rank that had more; `summed` counts
    the lines that were summed up."""

    records: list[tuple[Any, ...]]
    summed: int


def bounded(number: int, blocks: list[tuple[int, str]], per_look: int = PER_LOOK) -> Look:
    """The records one look journals for the lines of each rank (`AttemptFiles.new_lines`)."""
    out: list[tuple[Any, ...]] = []
    kept: dict[int, int] = {}
    sums: dict[int, Sum] = {}
    for rank, text in blocks:
        head, rest = _first_lines(text, per_look - kept.get(rank, 0))
        for entry in entries_of(head):
            kept[rank] = kept.get(rank, 0) + 1
            for own in ("ts", "v", "type"):  # the journal's, not the worker's to say
                entry.pop(own, None)
            in_place = in_place_record(entry)
            out.append(("in_place", rank, in_place) if in_place is not None
                       else ("progress", {**entry, "attempt": number, "rank": rank}))
        if rest:
            sums.setdefault(rank, Sum()).add(rest)
    out += [("progress", s.record(number, rank)) for rank, s in sums.items()]
    return Look(out, sum(s.count for s in sums.values()))


def _first_lines(text: str, count: int) -> tuple[str, str]:
    end = 0
    for _ in range(max(0, count)):
        end = text.find("\n", end) + 1
        if end == 0:
            return text, ""
    return text[:end], text[end:]


class Intake:
    """The journal's side of an attempt's worker files, for the watcher and for resume (an orphan's files)."""

    def __init__(self, config: RunConfig, journal: Journal, display: Display,
                 recovered: Callable[[int, InPlaceRecord], None] = lambda attempt, record: None) -> None:
        self.config, self.journal, self.display = config, journal, display
        self.recovered = recovered  # told of each OOM recovered in place: news, as a relaunch is
        self._adapters: set[int] = set()             # attempts a worker's adapter reported from
        self._told: set[tuple[int, str]] = set()     # (attempt, about) warnings already journaled

    def take_in(self, number: int, files: AttemptFiles, drain: bool = False) -> None:
        """Copy what the workers reported since the last look into the journal; with `drain`, everything they
        wrote (an attempt that ended), however many looks that takes."""
        if claimed := trains_in(files.new_claims(), self.config.command):  # a launcher started it (run/trainers.py)
            self.journal.append(schema.OBSERVED, attempt=number, plan={}, facts=claimed)
        for rank, data in files.new_observations():
            facts: dict[str, Any] = data["facts"] if isinstance(data.get("facts"), dict) else {}
            if facts.get("offloaded"):
                self._warn_once(number, "offload", f"attempt {number}: device_map put weights off the device "
                                f"({facts['offloaded']}): training runs many times slower; give --no-offload "
                                f"to treat that as out of memory, so the ladder quantizes until the model fits")
            self.journal.append(schema.OBSERVED, attempt=number, rank=rank, plan=data.get("plan", {}), facts=facts,
                                memory_cap=data.get("memory_cap", {}), model=data.get("model"),
                                **({"load": data["load"]} if data.get("load") else {}))
        while True:
            self._progress(number, files)
            if not (drain and files.unread):
                break
        if files.overlong:
            self._warn_once(number, "overlong", f"attempt {number}: its workers wrote progress lines longer than "
                            f"{LINE_LIMIT // 1024} KiB, which were skipped")

    def _progress(self, number: int, files: AttemptFiles) -> None:
        look = bounded(number, files.new_lines())
        entries: list[dict[str, Any]] = []
        began = False
        for record in look.records:
            if record[0] == "in_place":
                self.journal.extend(schema.PROGRESS, entries)  # in the order the worker wrote them
                entries = []
                self._journal_in_place(number, record[1], record[2])
                continue
            entry = record[1]
            began = began or "began_at" in entry or "resume_failed" in entry
            entries.append(entry)
            if entry.get("adapter"):
                self._adapters.add(number)
        self.journal.extend(schema.PROGRESS, entries)
        if look.summed:
            self._warn_once(number, "flood", f"attempt {number}: its workers report progress faster than oomladder "
                            f"journals it ({PER_LOOK} lines a look per rank); the rest are journaled as step ranges")
        if began:
            self._warn_if_not_resumed(number)

    def _journal_in_place(self, number: int, rank: int, record: dict[str, Any]) -> None:
        """An OOM the worker met in place: journaled with the numbers its message gives, and said live."""
        oom = record.get("oom") if isinstance(record.get("oom"), dict) else {}
        failure = classify(Evidence(returncode=1, record=oom, capped=bool(self.config.memory_cap)))
        journaled = self.journal.append(schema.IN_PLACE, **{**record, "attempt": number, "rank": rank,
                                                             "numbers": failure.numbers})
        if (why := damage(journaled)) is not None:  # the fold names it as damaged too
            self.display.event(f"attempt {number}: out of memory in step {record.get('step')}; its worker's "
                               f"in-place record cannot be read ({why})")
            return
        typed = InPlaceRecord.of(journaled)
        self.display.event(f"attempt {number}: out of memory in step {typed.step}; " + (
            f"recovered in place: {in_place_change(typed)}" if typed.recovered
            else f"not recovered in place: {typed.reason}"))
        if typed.recovered:
            self.recovered(number, typed)

    def _warn_once(self, number: int, about: str, text: str) -> None:
        if (number, about) in self._told:
            return
        self._told.add((number, about))
        self.journal.append(schema.WARNING, attempt=number, about=about, text=text)
        self.display.event(text)

    def warn_if_no_adapter(self, number: int) -> None:
        """A worker that no adapter reached (not Python, or an interpreter that cannot load it): said once."""
        if number in self._adapters:
            return
        self._warn_once(number, "adapter", f"attempt {number}: oomladder's adapter did not load in this program "
                        f"(not Python, or an interpreter that cannot import it): its steps are not counted, no step "
                        f"is saved after an OOM, and the plan reaches it only through {{placeholders}} and "
                        f"OOMLADDER_* variables")

    def _warn_if_not_resumed(self, number: int) -> None:
        """An attempt told to resume that began elsewhere: never silent, since its steps run again."""
        attempt = next((a for a in self.journal.view().attempts if a.number == number), None)
        if attempt is not None and attempt.resume_missed:
            self._warn_once(number, "resume", f"attempt {number} did not resume: {attempt.resume_missed}; the steps "
                            f"before it run again")

    def journal_checkpoint(self, number: int, files: AttemptFiles) -> dict[str, Any] | None:
        """The emergency checkpoint the attempt saved, journaled once it is whole (its marker written last); only
        then are the ones it supersedes deleted, and never one of a later step."""
        checkpoint = files.emergency()
        if not (checkpoint and isinstance(checkpoint.get("step"), int) and is_whole(str(checkpoint.get("path")))):
            return None
        self.journal.append(schema.CHECKPOINT, attempt=number, kind="emergency", path=checkpoint["path"],
                            step=checkpoint["step"])
        older = [c for c in self.journal.view().checkpoints if c.step <= checkpoint["step"]]
        remove_superseded(self.config.run_dir, older, keep=checkpoint["path"])
        return {"path": checkpoint["path"], "step": checkpoint["step"]}

