"""cgroups: the kernel's own count of OOM kills in this process's cgroup (the evidence that turns a bare
SIGKILL into a host-memory OOM: cgroup v2 `memory.events`, or v1 `memory.oom_control`), and a cgroup v2 of its
own for each attempt, where the machine delegates one (`AttemptGroup`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

_ROOT = Path("/sys/fs/cgroup")


def oom_kill_count(root: Path = _ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """The oom_kill counter, or None where no cgroup memory controller can be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":
            count = _read_counter(root / path.lstrip("/") / "memory.events")
        elif "memory" in controllers.split(","):
            count = _read_counter(root / "memory" / path.lstrip("/") / "memory.oom_control")
        else:
            continue
        if count is not None:
            return count
    return None


def _read_counter(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


# --- a cgroup of its own for each attempt ------------------------------------------------------------------
# cgroup v2 keeps every process an attempt starts, however it leaves: a daemon that calls setsid and clears its
# environment is still in its cgroup, and `cgroup.kill` ends them all at once. oomladder makes them under its
# own cgroup, which must be delegated to it (a systemd user service or scope with Delegate=yes, a container
# with its own cgroup namespace, or root).

PREFIX = "oomladder-"


def attempt_root(mountinfo: Path = Path("/proc/self/mountinfo"), proc_cgroup: Path = Path("/proc/self/cgroup"),
                 ) -> tuple[Path | None, str]:
    """The cgroup v2 folder this process may make attempt cgroups in, or None and why not, in a person's words."""
    mount = None
    try:
        for line in mountinfo.read_text().splitlines():
            fields = line.split()
            dash = fields.index("-")
            if fields[dash + 1] == "cgroup2":
                mount = (fields[3], Path(fields[4]))
                break
        own = next((line.split(":", 2)[2] for line in proc_cgroup.read_text().splitlines()
                    if line.startswith("0::")), None)
    except (OSError, ValueError, IndexError):
        return None, "the cgroups of this machine cannot be read"
    if mount is None or own is None:
        return None, "this machine has no cgroup v2 hierarchy"
    root, point = mount
    relative = os.path.relpath(own, root) if own.startswith(root) else None
    if relative is None or relative.startswith(".."):
        return None, "this process's cgroup is outside the mounted cgroup v2 hierarchy"
    base = (point / relative).resolve() if relative != "." else point
    if not (base / "cgroup.procs").is_file() or not os.access(base, os.W_OK):
        return None, f"its cgroup ({base}) is not delegated to this user"
    return base, ""


class AttemptGroup:
    """One attempt's cgroup: every process of the attempt, found and ended by the kernel's count, not by a
    walk of the process tree."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def make(cls, base: Path, run_key: str, attempt: int) -> AttemptGroup | None:
        """A new cgroup for attempt `attempt` of the run `run_key`, or None where the kernel does not allow one
        (or has no `cgroup.kill`, before Linux 5.14)."""
        _remove_empty(base)
        path = base / f"{PREFIX}{run_key}-{attempt:03d}-{os.getpid()}"
        try:
            path.mkdir()
        except FileExistsError:
            pass
        except OSError:
            return None
        if not (path / "cgroup.kill").exists():
            _remove(path)
            return None
        return cls(path)

    @property
    def procs_file(self) -> str:
        """Where a process writes `0` to move itself in (the worker does, before it runs the command)."""
        return str(self.path / "cgroup.procs")

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def kill(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL to every process left in the cgroup, waited for; then the cgroup is removed. The pids found."""
        found = self.pids()
        try:
            (self.path / "cgroup.kill").write_text("1")
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        _remove(self.path)
        return found


def leftovers(bases: list[Path], run_key: str) -> list[AttemptGroup]:
    """Attempt cgroups of the run `run_key` that an earlier supervisor left under any of `bases`, once it is dead
    (its pid ends the name): another node's live supervisor of the same run on this host keeps its own."""
    found = []
    for base in bases:
        try:
            found += [AttemptGroup(p) for p in base.glob(f"{PREFIX}{run_key}-*") if p.is_dir() and orphaned(p)]
        except OSError:
            continue
    return found


def orphaned(path: Path) -> bool:
    """An attempt cgroup whose supervisor is gone."""
    pid = Path(path).name.rsplit("-", 1)[-1]
    return pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists()


def _remove(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _remove_empty(base: Path) -> None:
    """Attempt cgroups a killed supervisor left empty, any run's: the kernel removes only an empty cgroup, and
    one whose supervisor (its name's last part) still runs is left to it."""
    for path in base.glob(f"{PREFIX}*-*-*"):
        if orphaned(path):
            _remove(path)
