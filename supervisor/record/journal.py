"""The run's one append-only journal: JSON lines, a schema version on each, synced at each record.

It is the single source of truth: the live table, the report and a later resume are all folded
from it (history.py), so a crash loses at most the line being written, and a line cut
off by a crash is skipped on reading rather than failing the whole run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oomladder.record.schema import SCHEMA_VERSION

JOURNAL_NAME = "journal.jsonl"


class Journal:
    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.records: list[dict[str, Any]] = read_journal(self.path) if self.path.exists() else []
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
        records = [{"v": SCHEMA_VERSION, "type": type_, "ts": ts, **fields} for fields in many]
        if records:
            self._file.write("".join(json.dumps(r, default=str) + "\n" for r in records))
            self._file.flush()
            os.fsync(self._file.fileno())
            self.records.extend(records)
        return records

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """Every whole record in `path`; a line cut off mid-write, or not a record, is skipped."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "type" in record:
                records.append(record)
    return records


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
