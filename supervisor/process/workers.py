"""The process layer: start a worker in its own session, poll it, stop its whole group.

It knows nothing of plans or ladders (as in PyTorch's elastic agent, the policy lives above and
sees only `Exit` values). Every system call the runner makes on workers goes through a
`WorkerHandle`, so the runner's tests swap in fakes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class LaunchSpec:
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    stdout: Path
    stderr: Path
    cgroup_procs: str | None = None  # the attempt's cgroup (cgroup.py): the worker moves in before it runs


class WorkerHandle(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0, hurry: Callable[[], bool] = lambda: False) -> int:
        ...

    def reap_group(self) -> None: ...


Launcher = Callable[[LaunchSpec], WorkerHandle]


class LaunchError(Exception):
    """The command could not be started at all (not found, not executable)."""


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGTERM to the worker if the supervisor dies, so no orphan keeps a GPU.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _before_exec(cgroup_procs: str | None) -> Callable[[], None]:
    """In the new worker, before it runs the command: die with the supervisor, and join the attempt's cgroup, so
    that everything it starts is in it from the first instruction on."""
    def setup() -> None:
        _die_with_parent()
        if cgroup_procs:
            try:
                with open(cgroup_procs, "w") as f:
                    f.write("0")
            except OSError:
                pass  # the attempt runs without it: the process tree and the sweep still find its processes
    return setup


def become_subreaper() -> bool:
    """Linux: descendants whose parent dies (a `bash -c` wrapper's python, a daemon that `setsid`'d away)
    become this process's children instead of init's, so they can be found and stopped, and reaped."""
    try:
        return bool(ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0)
    except (OSError, AttributeError):
        return False


def stop_descendants(grace: float = 5.0, keep: Callable[[int], bool] = lambda pid: False) -> list[int]:
    """Every process below this one (ranks, DataLoader workers, daemons re-parented here): SIGTERM, then
    SIGKILL after `grace`, waited for. Returns the pids that were found."""
    import psutil
    found = [p for p in psutil.Process().children(recursive=True) if not keep(p.pid)]
    stop_processes(found, grace)
    reap_orphans()
    return [p.pid for p in found]


def stop_processes(processes: list[Any], grace: float, hurry: Callable[[], bool] = lambda: False) -> None:
    """psutil processes: SIGTERM, then SIGKILL to those still alive after `grace` (at once when `hurry()` says
    so: a second signal to oomladder), waited for."""
    import psutil
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    deadline, alive = time.monotonic() + grace, list(processes)
    while alive and time.monotonic() < deadline and not hurry():
        _gone, alive = psutil.wait_procs(alive, timeout=min(0.1, max(0.0, deadline - time.monotonic())))
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


def reap_orphans() -> None:
    """Zombies of descendants re-parented here: as a subreaper, or as PID 1 in a container, nobody else will."""
    import psutil
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.NoSuchProcess, ChildProcessError):
            pass


class Worker:
    """A real worker process, leader of its own process group."""

    def __init__(self, spec: LaunchSpec) -> None:
        self.spec = spec
        out = open(spec.stdout, "ab")
        err = open(spec.stderr, "ab")
        try:
            self.popen = subprocess.Popen(
                list(spec.argv), env=spec.env, cwd=spec.cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, preexec_fn=_before_exec(spec.cgroup_procs))
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise LaunchError(f"cannot start '{spec.argv[0]}': {exc.strerror or exc}") from None
        finally:
            out.close()
            err.close()
        self.pid = self.popen.pid
        self.pgid = self.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0, hurry: Callable[[], bool] = lambda: False) -> int:
        """`sig` to the leader (it finishes and saves its step; a launcher passes it on to its ranks). Then to the
        whole group, when most of `grace` is gone, or as soon as the leader is gone and the group is not: a launcher
        that dies of the signal without passing it on (`bash -c`, accelerate's single-process launcher) leaves its
        rank to be told. SIGKILL to the group when `grace` is up, or at once when `hurry()` says so (a second
        signal to oomladder)."""
        start = time.monotonic()
        if self.popen.poll() is None and not hurry():
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass
            self._wait(lambda: self.popen.poll() is None, start + grace * 0.8, hurry)
        if group_members(self.pgid) and not hurry():
            self.signal_group(sig)
            self._wait(lambda: self.popen.poll() is None or bool(group_members(self.pgid)), start + grace, hurry)
        if self.popen.poll() is None:
            self.signal_group(signal.SIGKILL)
            self.popen.wait()
        self.reap_group()
        return self.popen.returncode

    @staticmethod
    def _wait(busy: Callable[[], bool], deadline: float, hurry: Callable[[], bool]) -> None:
        while busy() and time.monotonic() < deadline and not hurry():
            time.sleep(0.05)

    def reap_group(self, timeout: float = 10.0) -> None:
        """Kill what the leader left behind (DataLoader workers, ranks) and wait until it is gone."""
        self.signal_group(signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while group_members(self.pgid) and time.monotonic() < deadline:
            time.sleep(0.05)


def spawn(spec: LaunchSpec) -> Worker:
    return Worker(spec)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def read_tail(path: Path, limit: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
