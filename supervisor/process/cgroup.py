"""The kernel's own count of OOM kills in this process's cgroup: the evidence that turns a bare
SIGKILL into a host-memory OOM. cgroup v2 `memory.events`, or v1 `memory.oom_control`."""

from __future__ import annotations

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
