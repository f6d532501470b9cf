"""The file protocol between a worker and its supervisor, both sides: what the worker leaves in its
attempt folder (one file of each kind per rank) and how the supervisor reads it.

`observed.R.json` (the program's own settings and facts), `progress.R.jsonl` (a line per step),
`failure.R.json` (the exception that killed it), `trains.PID.json` (a process that trains: which, and what launched
it; worker/protocol/role.py). A progress line `{"in_place": {...}}` is an OOM the
worker met without a relaunch, or why it did not (worker/recovery/in_place.py): the supervisor journals it as its own
record (`in_place_record`), `emergency.0.json` (the emergency checkpoint rank
0 saved). Whole files are written atomically, so the supervisor never reads half of one; progress
is read line by line as it grows, whole lines only. Standard library only: this runs in the worker.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from oomladder.worker.state import STATE

OBSERVED, PROGRESS, FAILURE, EMERGENCY, TRAINS = "observed", "progress", "failure", "emergency", "trains"
# Written last inside an emergency checkpoint's folder (worker/recovery/emergency.py): a folder without it is not whole.
CHECKPOINT_MARKER = "oomladder-checkpoint.json"



def rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


def path(kind: str, rank_: int | None = None, folder: str | Path | None = None) -> Path:
    folder = Path(folder or os.environ["OOMLADDER_ATTEMPT_DIR"])
    suffix = "jsonl" if kind == PROGRESS else "json"
    return folder / f"{kind}.{rank() if rank_ is None else rank_}.{suffix}"


def write_json(target: Path, data: dict[str, Any]) -> None:
    """`target` written whole: a temporary file of its own (never a name someone could have planted a link
    at), then renamed over it."""
    if not STATE.reporting:
        return
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, default=str))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_progress(entry: dict[str, Any]) -> None:
    if not STATE.reporting:
        return
    with open(path(PROGRESS), "a", encoding="utf-8") as f:
        f.write(json.dumps({"ts": round(time.time(), 3), **entry}, default=str) + "\n")


def write_failure(exc: BaseException, **context: Any) -> bool:
    """Record `exc` once per process; the first record (closest to the cause) wins."""
    target = path(FAILURE)
    if not STATE.reporting or target.exists():
        return False
    cls = type(exc)
    module = cls.__module__
    name = cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"
    lines = traceback.format_exception(cls, exc, exc.__traceback__)
    causes: list[str] = []
    cause = exc.__cause__
    while cause is not None and len(causes) < 5:  # `raise X from oom`: the OOM is part of why it died
        causes.append(f"{type(cause).__qualname__}: {str(cause)[:4000]}")
        cause = cause.__cause__
    write_json(target, {"exc_type": name, "message": str(exc)[:20000], "causes": causes,
                        "traceback": "".join(lines)[-8000:],
                        "pid": os.getpid(), "rank": rank(), "world_size": int(os.environ.get("WORLD_SIZE", "1") or 1),
                        "ts": round(time.time(), 3), **context})
    return True


def write_claim(claim: dict[str, Any]) -> None:
    """This process trains (worker/protocol/role.py): one file per process, named by its pid."""
    write_json(Path(os.environ["OOMLADDER_ATTEMPT_DIR"]) / f"{TRAINS}.{claim['pid']}.json", claim)


def claims(folder: str | Path) -> list[dict[str, Any]]:
    """Every process of the attempt that trains, first to claim first: {pid, rank, ancestors, argv, launchers}."""
    found = [c for c in map(read_json, Path(folder).glob(f"{TRAINS}.*.json")) if c is not None]
    return sorted(found, key=lambda c: c.get("ts", 0))


# --- the supervisor's side -------------------------------------------------------------------------

def in_place_record(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The in-place recovery a progress line reports (worker/recovery/in_place.py `_tell`), or None for a step's
    line."""
    record = entry.get("in_place")
    return record if isinstance(record, dict) else None


LINE_LIMIT = 64 * 1024     # a progress line longer than this is no step's report: skipped, never held whole
READ_LIMIT = 4 * 2**20     # bytes of a progress file read at one look: a flood is taken in over several looks


class AttemptFiles:
    """What the worker ranks of one attempt left in `folder`, read as it grows: each progress line once, at most
    `READ_LIMIT` bytes of a file per look, and no line held longer than `LINE_LIMIT`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._offsets: dict[Path, int] = {}
        self._skipping: set[Path] = set()  # files inside an overlong line, read past until its end
        self._observed: dict[Path, Any] = {}
        self._claimed: set[Any] = set()
        self.overlong = 0                  # progress lines skipped for their length
        self.unread = False                # the last look stopped at READ_LIMIT: there is more to read now

    def new_observations(self) -> list[tuple[int, dict[str, Any]]]:
        """(rank, observation) for each rank whose observed file changed since the last look."""
        changed = []
        for target in sorted(self.folder.glob(f"{OBSERVED}.*.json")):
            data = read_json(target)
            if data is not None and self._observed.get(target) != data:
                self._observed[target] = data
                changed.append((rank_of(target), data))
        return changed

    def new_progress(self) -> list[tuple[int, dict[str, Any]]]:
        """(rank, entry) for each whole progress line written since the last look (up to READ_LIMIT per file)."""
        return [(rank, entry) for rank, text in self.new_lines() for entry in entries_of(text)]

    def new_lines(self) -> list[tuple[int, str]]:
        """(rank, text) for each progress file: its whole lines written since the last look, at most READ_LIMIT
        bytes of them, those longer than LINE_LIMIT left out (and counted in `overlong`)."""
        blocks: list[tuple[int, str]] = []
        self.unread = False
        for target in sorted(self.folder.glob(f"{PROGRESS}.*.jsonl")):
            offset = self._offsets.get(target, 0)
            try:
                with open(target, "rb") as f:
                    f.seek(offset)
                    chunk = f.read(READ_LIMIT)
            except OSError:
                continue
            self.unread = self.unread or len(chunk) == READ_LIMIT
            start = 0
            if target in self._skipping:  # the rest of an overlong line
                end = chunk.find(b"\n")
                if end < 0:
                    self._offsets[target] = offset + len(chunk)
                    continue
                self._skipping.discard(target)
                start = end + 1
            last = chunk.rfind(b"\n")
            if last >= start:
                complete, tail, self._offsets[target] = chunk[start: last + 1], chunk[last + 1:], offset + last + 1
            else:
                complete, tail, self._offsets[target] = b"", chunk[start:], offset + start
            if len(tail) > LINE_LIMIT:  # a line still being written, and already too long: read past its end
                self._skipping.add(target)
                self.overlong += 1
                self._offsets[target] = offset + len(chunk)
            if complete and max(map(len, complete.split(b"\n"))) > LINE_LIMIT:
                complete, overlong = _OVERLONG.subn(b"", complete)
                self.overlong += overlong
            if complete:
                blocks.append((rank_of(target), complete.decode("utf-8", errors="replace")))
        return blocks

    def claims(self) -> list[dict[str, Any]]:
        return claims(self.folder)

    def new_claims(self) -> list[dict[str, Any]]:
        """The processes that began to train since the last look (worker/protocol/role.py)."""
        new = [c for c in claims(self.folder) if c.get("pid") not in self._claimed]
        self._claimed.update(c.get("pid") for c in new)
        return new

    def first_failure(self) -> dict[str, Any] | None:
        """The earliest failure record of any rank: the root cause, not a peer dying of it."""
        records = [r for r in map(read_json, self.folder.glob(f"{FAILURE}.*.json")) if r is not None]
        return min(records, key=_when) if records else None

    def emergency(self) -> dict[str, Any] | None:
        """The emergency checkpoint rank 0 marked whole: {path, step, max_steps}."""
        return read_json(path(EMERGENCY, 0, self.folder))


_OVERLONG = re.compile(rb"^[^\n]{%d,}\n" % (LINE_LIMIT + 1), re.M)
_decode = json.JSONDecoder().decode


def entries_of(text: str) -> Iterator[dict[str, Any]]:
    """The objects of the lines of `text`; a line that is not one (not JSON, nested deeper than any report of a
    step, a list) is passed over."""
    for line in text.splitlines():
        try:
            entry = _decode(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(entry, dict):
            yield entry


def _when(record: dict[str, Any]) -> float:
    ts = record.get("ts")
    return float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else float("inf")


def read_json(target: Path, limit: int = 16 * 2**20) -> dict[str, Any] | None:
    """A whole file the worker wrote, as an object; None when it is missing, larger than `limit`, or not one."""
    try:
        if target.stat().st_size > limit:
            return None
        data = json.loads(target.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def rank_of(target: Path) -> int:
    try:
        return int(target.name.split(".")[1])
    except (IndexError, ValueError):
        return 0
