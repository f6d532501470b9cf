"""The run's one append-only journal: JSON lines, a schema version on each, synced at each record.

It is the single source of truth: the live table, the report and a later resume are all folded
from it (history.py), so a crash loses at most the line being written, and a line cut
off by a crash is skipped on reading rather than failing the whole run.

In memory, a journal keeps its fold, updated record by record, and every record but the progress
ones (most of a long run's journal): a run of hundreds of thousands of steps stays small.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from oomladder.errors import RunDirError
from oomladder.record.history import Folder, RunView
from oomladder.record.schema import PROGRESS, SCHEMA_VERSION

JOURNAL_NAME = "journal.jsonl"


class Journal:
    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.records: list[dict[str, Any]] = []   # every record but progress, in order
        self.count = 0                            # every record, progress included
        self.last_ts = 0.0                        # when the newest record was written
        self.lines = 0                            # lines in the file: where the next record goes
        self.folder = Folder()
        if self.path.exists():
            for self.lines, record in numbered(self.path):
                self._keep(record)
            self.lines = _count_lines(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if self.path.stat().st_size and not _ends_with_newline(self.path):
            self._file.write("\n")  # a crash cut the last line: start the next record on a line of its own

    @classmethod
    def in_run_dir(cls, run_dir: str | Path, clock: Callable[[], float] = time.time) -> Journal:
        return cls(Path(run_dir) / JOURNAL_NAME, clock)

    def append(self, type_: str, **fields: Any) -> dict[str, Any]:
        return self.extend(type_, [fields])[0]

    def extend(self, type_: str, many: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Records of one type, written and synced together: a fast worker's steps cost one fsync a poll."""
        ts = round(self.clock(), 3)
        # The journal's own keys are its own: a worker's line that names a type or a time does not choose them.
        records = [{**fields, "v": SCHEMA_VERSION, "type": type_, "ts": ts} for fields in many]
        if records:
            self._file.write("".join(json.dumps(r, default=str) + "\n" for r in records))
            self._file.flush()
            os.fsync(self._file.fileno())
            for record in records:
                self.lines += 1
                self._keep(record)
        return records

    def view(self) -> RunView:
        """The run as the journal says it is now."""
        return self.folder.view()

    def _keep(self, record: dict[str, Any]) -> None:
        self.count += 1
        self.last_ts = record.get("ts", self.last_ts)
        self.folder.add(record, self.lines)
        if record.get("type") != PROGRESS:
            self.records.append(record)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """Every whole record in `path`; a line cut off mid-write, or not a record, is skipped."""
    return list(iter_journal(path))


def iter_journal(path: str | Path, skipped: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """The whole records of `path`, one at a time; the numbers of lines that are not records go to `skipped`."""
    return (record for _number, record in numbered(path, skipped))


def numbered(path: str | Path, skipped: list[int] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for the whole records of `path`, as `iter_journal`."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # not JSON, or nested deeper than any record of ours
                record = None
            if isinstance(record, dict) and "type" in record:
                yield number, record
            elif skipped is not None:
                skipped.append(number)


def fold_journal(path: str | Path) -> RunView:
    """The view of the journal at `path`, read as it streams: what `report` and `resume` show. Lines in the
    middle that are not records are named in the view; a last line cut off by a crash is not damage."""
    skipped: list[int] = []
    folder = Folder()
    for number, record in numbered(path, skipped):
        folder.add(record, number)
    view = folder.view()
    lines = _count_lines(path)
    view.skipped_lines = [n for n in skipped if n != lines]
    return view


def _count_lines(path: Path | str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def open_journal(path: Path, clock: Callable[[], float] = time.time) -> Journal:
    """The journal to append to; a disk or folder that refuses it is one line of bad input, not a traceback."""
    try:
        return Journal(path, clock)
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"cannot open the journal '{path}' ({getattr(exc, 'strerror', None) or exc}): check the "
                          f"run directory's disk and permissions") from None
