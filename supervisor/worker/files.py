"""What the worker leaves in its attempt folder for the supervisor: one file of each kind per rank.

`observed.R.json` (the program's own settings and facts), `progress.R.jsonl` (a line per step),
`failure.R.json` (the exception that killed it). Whole files are written atomically, so the
supervisor never reads half of one.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

OBSERVED, PROGRESS, FAILURE = "observed", "progress", "failure"


def rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


def path(kind: str, rank_: int | None = None, folder: str | Path | None = None) -> Path:
    folder = Path(folder or os.environ["OOMLADDER_ATTEMPT_DIR"])
    suffix = "jsonl" if kind == PROGRESS else "json"
    return folder / f"{kind}.{rank() if rank_ is None else rank_}.{suffix}"


def write_json(target: Path, data: dict[str, Any]) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, target)


def append_progress(entry: dict[str, Any]) -> None:
    with open(path(PROGRESS), "a", encoding="utf-8") as f:
        f.write(json.dumps({"ts": round(time.time(), 3), **entry}, default=str) + "\n")


def write_failure(exc: BaseException, **context: Any) -> bool:
    """Record `exc` once per process; the first record (closest to the cause) wins."""
    target = path(FAILURE)
    if target.exists():
        return False
    cls = type(exc)
    module = cls.__module__
    name = cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"
    lines = traceback.format_exception(cls, exc, exc.__traceback__)
    causes, cause = [], exc.__cause__
    while cause is not None and len(causes) < 5:  # `raise X from oom`: the OOM is part of why it died
        causes.append(f"{type(cause).__qualname__}: {str(cause)[:4000]}")
        cause = cause.__cause__
    write_json(target, {"exc_type": name, "message": str(exc)[:20000], "causes": causes,
                        "traceback": "".join(lines)[-8000:],
                        "pid": os.getpid(), "rank": rank(), "world_size": int(os.environ.get("WORLD_SIZE", "1") or 1),
                        "ts": round(time.time(), 3), **context})
    return True
