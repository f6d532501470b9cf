"""The run directory as a place one supervisor owns: made private, locked for the whole run, and cleared
of processes an earlier supervisor of the same run left behind.

The lock is an advisory `flock` on a file in the run directory (filelock): the kernel drops it when its
holder dies, however it dies, so a lock left by a crashed supervisor is free again. On several nodes
each node takes its own (the directory is shared; one supervisor per node).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from oomladder.errors import RunDirError
from oomladder.process import cgroup
from oomladder.process.workers import stop_processes


def make_run_dir(run_dir: Path) -> None:
    """The run directory, made `0700` when new: it holds command lines, paths and checkpoints."""
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise RunDirError(f"cannot make the run directory '{run_dir}': '{parent}' is a file, not a folder; "
                              f"give another --run-dir")
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot make the run directory '{run_dir}' ({exc.strerror or exc}): give a --run-dir "
                          f"on a writable disk") from None
    if not os.access(run_dir, os.W_OK):
        raise RunDirError(f"the run directory '{run_dir}' is not writable: give a --run-dir on a writable disk")


class RunLock:
    """Held for the whole run (resume included): a second supervisor on the same run directory and node is
    refused with one line naming the holder."""

    def __init__(self, run_dir: Path, node: int = 0) -> None:
        name = ".oomladder.lock" if node == 0 else f".oomladder.node{node}.lock"
        self.path, self.about = run_dir / name, run_dir / f"{name}.json"
        self.lock = FileLock(self.path)

    def __enter__(self) -> RunLock:
        self.created = not self.path.exists()
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise RunDirError(f"the run directory '{self.path.parent}' is in use by {self._holder()}: wait for it to "
                              f"end, or give this run its own --run-dir") from None
        except OSError as exc:
            raise RunDirError(f"cannot lock the run directory '{self.path.parent}' ({exc.strerror or exc})") from None
        try:
            self.about.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()

    def discard(self) -> None:
        """Refused before the run began: the lock's files go too if this lock made them."""
        self.lock.release()
        if self.created:
            for path in (self.about, self.path):
                path.unlink(missing_ok=True)

    def _holder(self) -> str:
        try:
            holder = json.loads(self.about.read_text())
            since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder["since"]))
            return f"oomladder pid {holder['pid']} on {holder['host']} (since {since})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another oomladder"


def stop_run_processes(run_dir: Path, grace: float = 10.0, launched: Iterable[Mapping[str, Any]] = (),
                       hurry: Callable[[], bool] = lambda: False) -> list[int]:
    """Processes still running from an earlier supervisor of this run (it was killed and its worker ignored
    SIGTERM, or a wrapper's child or a daemon outlived it), stopped: SIGTERM, then SIGKILL after `grace` (at once
    when `hurry()`), and last each attempt cgroup it left is killed and removed. Returns the pids found.

    They are found by the run directory in their environment; by the attempt cgroups the run's `launched`
    records name (and any of the run's left under the same folders), which hold every process of an attempt,
    however it left; and, where there are no cgroups, by the session of a worker it launched, started after
    it: a process whose environment was cleared is still in its worker's session (unless it also left that)."""
    import psutil
    marker = str(run_dir.resolve())
    launched = [r for r in launched if isinstance(r.get("pid"), int) and isinstance(r.get("ts"), (int, float))]
    groups = _run_groups(run_dir, launched)
    in_groups = {pid for group in groups for pid in group.pids()}
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid == os.getpid():
                continue
            if (process.pid in in_groups or process.environ().get("OOMLADDER_RUN_DIR") == marker
                    or _in_a_workers_session(process, launched)):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    stop_processes(found, grace, hurry)
    for group in groups:
        group.kill()
    return [p.pid for p in found]


def run_key(run_dir: Path) -> str:
    """The run directory as a short name for its attempt cgroups."""
    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]


def _run_groups(run_dir: Path, launched: list[Mapping[str, Any]]) -> list[cgroup.AttemptGroup]:
    named = {Path(r["cgroup"]) for r in launched if isinstance(r.get("cgroup"), str)
             and Path(r["cgroup"]).name.startswith(f"{cgroup.PREFIX}{run_key(run_dir)}-")}
    bases = {p.parent for p in named} | ({root} if (root := cgroup.attempt_root()[0]) is not None else set())
    paths = {g.path for g in cgroup.leftovers(sorted(bases), run_key(run_dir))} | {
        p for p in named if p.is_dir() and cgroup.orphaned(p)}
    return [cgroup.AttemptGroup(p) for p in sorted(paths)]


def _in_a_workers_session(process: Any, launched: list[Mapping[str, Any]]) -> bool:
    """In the session of a worker the run launched, and started after it. The session's id is the worker's pid;
    while the session has members that pid is never reused, and where its leader is still alive, it must be the
    worker (started when the run journaled its launch), not a later process that got the same pid."""
    import psutil
    try:
        session = os.getsid(process.pid)
    except OSError:
        return False
    for record in launched:
        if session != record["pid"]:
            continue
        try:
            leader = psutil.Process(session)
            if abs(leader.create_time() - record["ts"]) > 60:
                return False  # a live leader that is not the worker: another session with a reused id
        except psutil.NoSuchProcess:
            pass  # the worker is gone and its session lives on in what it started
        return bool(process.create_time() >= record["ts"] - 60)
    return False
