"""What a run is given (`RunConfig`) and the exit codes it ends with (docs/running.md, "Exit codes")."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import wait_exponential

from oomladder.ladder import Ladder
from oomladder.plan import Plan

EXIT_FINISHED = 0
EXIT_USAGE = 2
EXIT_NOT_MEMORY = 3
EXIT_LADDER_EXHAUSTED = 4
EXIT_BUDGET = 5
EXIT_INTERRUPTED: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
EXIT_INTERNAL = 70     # a bug in oomladder itself
EXIT_DISK_FULL = 74    # the disk holding the run directory is full (sysexits' EX_IOERR)


@dataclass(frozen=True)
class RunConfig:
    command: tuple[str, ...]
    run_dir: Path
    ladder: Ladder
    memory_cap: int | None = None
    max_attempts: int = 10
    max_wall_time: float | None = None            # seconds for this invocation, attempts included
    hang_timeout: float | None = None             # seconds without progress or output before a worker is stopped
    # tenacity wait policy before retrying a transient failure: 5 s, 10 s, 20 s, ...
    backoff: Callable[[Any], float] = field(default_factory=lambda: wait_exponential(multiplier=5, max=300))
    initial: Plan = field(default_factory=Plan)   # --set values
    poll_interval: float = 0.25
    grace: float = 60.0                           # seconds between SIGTERM and SIGKILL: a step and its save
    cwd: str = field(default_factory=os.getcwd)
    nnodes: int = 1                               # one supervisor per node, all sharing run_dir (oomladder/nodes)
    node_rank: int = 0
    node_timeout: float = 600.0                   # seconds to wait for the other nodes at an attempt's start and end
    no_offload: bool = False                      # weights device_map puts on the CPU or disk count as an OOM
    in_place: bool = True                         # an OOM in a step is first met in the worker (worker/recovery/)
    split_ahead: bool = True                      # each step is sized before it runs (worker/recovery/ahead.py)
    cpu_cap: str = "auto"                         # how --memory-cap is counted on a CPU (process/allocator.py)
    notify: tuple[str, ...] = ()                  # Apprise URLs told of each fallback and of the end (run/notify.py)
    notify_config: str | None = None              # a file of targets in Apprise's configuration format

