"""Which process of the worker's tree trains: the one the cap, the reports and the failure record belong to.

The supervisor starts one command, and the training may run far below it: `trl sft` runs `accelerate launch`,
which starts python; papermill starts a kernel; `bash -c` starts python. Every Python process below the worker
loads the adapter (PYTHONPATH is inherited), and each decides its own role, by what it does rather than by its name:

- It *trains* (it is a rank) once it starts training work: it loads a model, or builds a Trainer, an Accelerator, a
  Lightning Trainer, a torch optimizer or an oomladder session. Each of these arms the memory cap first
  (memcap.arm), which claims the role: `trains.PID.json` in the attempt folder names the process, its Python
  ancestors and the command lines between the supervisor and it (the user's own commands, nothing above the
  supervisor). From then on it reports.
- Until a process trains, the first Python process of the attempt speaks for the worker (a launcher's bad flag, a
  script's bug before training are the attempt's failure), and so do the ranks torch's elastic launcher starts.
- A process that does not train, below which one does, is a launcher: when its rank dies, its own exception
  (CalledProcessError, ChildFailedError, PapermillExecutionError) only repeats that death, so it records nothing and
  reports no peak. It learns this when it would report, from the claims in the attempt folder.
- Any other process (a tokenizer server, a data script, a DataLoader worker) is a helper: it reports nothing.

Standard library only: this runs in every Python process of the worker.
"""

from __future__ import annotations

import os
import sys
import time

from oomladder.worker.protocol import files
from oomladder.worker.state import STATE

ANCESTORS = "OOMLADDER_PYTHON_ANCESTORS"  # the pids of the Python processes above this one that loaded the adapter



def install() -> None:
    """Whether this process speaks for the worker from the start (the first Python process of the attempt, or a
    rank that torch's elastic launcher started), and its place in the tree for the processes it starts."""
    owner = os.environ.get("OOMLADDER_OWNER_PID")
    launcher = os.environ.get("OOMLADDER_LAUNCHER_PID")
    if owner is None:
        os.environ["OOMLADDER_OWNER_PID"] = str(os.getpid())
    STATE.reporting = owner is None or (launcher is not None and launcher == str(os.getppid()))
    inherited = os.environ.get(ANCESTORS, "")
    me = STATE.role
    me.pid, me.ancestors = os.getpid(), tuple(int(p) for p in inherited.split(",") if p.isdigit())
    os.environ[ANCESTORS] = ",".join(map(str, (*me.ancestors, os.getpid())))


def trains() -> bool:
    return STATE.role.trains


def claim() -> None:
    """This process trains: it reports from now on, and the processes above it are its launchers. Once; never in a
    forked copy of a process (a DataLoader worker forked after the claim is the program's helper)."""
    me = STATE.role
    if me.pid is None:  # the adapter's pieces used without its install (the tests of one framework's adapter)
        me.pid = os.getpid()
    if me.trains or me.pid != os.getpid() or not os.environ.get("OOMLADDER_ATTEMPT_DIR"):
        return
    me.trains = True
    STATE.reporting = True
    files.write_claim({"pid": os.getpid(), "ts": round(time.time(), 3), "rank": files.rank(),
                       "ancestors": list(me.ancestors), "argv": [sys.executable, *sys.argv],
                       "launchers": _launchers()})
    for flush in STATE.on_claim:
        flush()


def mark_launcher() -> None:
    """This process starts ranks through torch's elastic launcher (torchrun, accelerate's multi-process launch): the
    ranks it starts speak for the worker from their start."""
    if not STATE.role.trains:
        STATE.role.launcher = True
        os.environ["OOMLADDER_LAUNCHER_PID"] = str(os.getpid())


def is_launcher() -> bool:
    """Whether this process only launched the training: it does not train, and a process below it does. Such a
    process stops reporting."""
    me = STATE.role
    if me.trains:
        return False
    if not me.launcher:
        folder = os.environ.get("OOMLADDER_ATTEMPT_DIR")
        below = folder is not None and any(os.getpid() in (c.get("ancestors") or ()) for c in files.claims(folder))
        me.launcher = below
    if me.launcher:
        STATE.reporting = False
    return me.launcher


def _launchers() -> list[list[str]]:
    """The command lines of the processes between the supervisor and this one, outermost first (Linux's /proc;
    empty elsewhere). Only below the supervisor: a chain that does not reach it says nothing of anyone else's."""
    supervisor = int(os.environ.get("OOMLADDER_SUPERVISOR_PID", "0") or 0)
    if supervisor in (0, os.getpid()):  # no supervisor, or a kernel that is its own (oomladder/notebook)
        return []
    chain: list[list[str]] = []
    pid = os.getppid()
    while pid != supervisor and pid > 1 and len(chain) < 32:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                chain.append([part.decode(errors="replace") for part in f.read().split(b"\0") if part])
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            return []
        pid = int(stat[stat.rfind(")") + 2:].split()[1])  # after "pid (comm) state": the parent's pid
    return chain[::-1] if pid == supervisor else []
