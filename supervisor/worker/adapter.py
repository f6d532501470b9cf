"""The worker adapter: installed from sitecustomize before the user's program runs.

It patches, when (and only if) the program imports them, one framework at a time: the Hugging Face
Trainer (transformers/trainer.py), accelerate's own loops (accelerator.py), model loading (transformers/loading.py),
torch itself (hooks/torch_hooks.py), and PyTorch Lightning (lightning/trainer.py). Patching happens in a post-import
hook, so a program pays only for the frameworks it imports. It also records the exception that kills the process
and the peak of a process that ends.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time

from oomladder.worker import common
from oomladder.worker.accelerate import accelerator
from oomladder.worker.common import safely
from oomladder.worker.hooks import command_line, kernel, memcap, torch_hooks
from oomladder.worker.hooks.importhook import PostImportFinder
from oomladder.worker.lightning import trainer as lightning
from oomladder.worker.protocol import files, role
from oomladder.worker.state import STATE
from oomladder.worker.transformers import loading, trainer

FRAMEWORKS = (trainer, accelerator, loading, torch_hooks, lightning, kernel, command_line)
GRACE = 60.0  # seconds a worker whose supervisor died has to save its step, as under the supervisor's own stop


def install() -> None:
    if STATE.installed:  # a kernel whose extension began a second run (oomladder/notebook)
        return
    STATE.installed = True
    role.install()  # whether this process speaks for the worker, and its place in the tree (protocol/role.py)
    hooks = {name: hook for framework in FRAMEWORKS for name, hook in framework.HOOKS.items()}
    for name, hook in list(hooks.items()):
        if name in sys.modules:
            safely(hook, sys.modules[name])
            del hooks[name]
    sys.meta_path.insert(0, PostImportFinder(hooks, safely))
    _chain_excepthook()
    atexit.register(_report_exit)
    from oomladder import __version__
    safely(files.append_progress, {"adapter": __version__})  # the supervisor knows the plan can reach this program
    safely(_watch_supervisor)


def new_attempt() -> None:
    """Another attempt in this same process (a notebook's kernel, oomladder/notebook): what the last attempt's
    training left in the adapter's state is not the next one's. Its plan already holds an in-place split."""
    STATE.new_attempt()


def _watch_supervisor() -> None:
    """A worker whose supervisor died (kill -9) finds out within seconds and stops as on SIGTERM: its step in
    flight is saved and it exits, so `resume` never finds a trainer still running beside a new one. The
    kernel's parent-death signal reaches only the supervisor's direct child; this reaches every process."""
    supervisor = int(os.environ.get("OOMLADDER_SUPERVISOR_PID", "0") or 0)
    if not supervisor:
        return

    def watch() -> None:
        while True:
            time.sleep(2.0)
            try:
                os.kill(supervisor, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                continue
        # The adapter's handler saves the step in flight and exits. The kernel's parent-death SIGTERM may have
        # come first: a second one would be the "act at once" kind and lose that step.
        if not STATE.stop_requested:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(GRACE)
        os._exit(143)  # a program that ignores SIGTERM, or never reaches a step's end

    threading.Thread(target=watch, name="oomladder-supervisor-watch", daemon=True).start()


def _report_exit() -> None:
    """The peak of a process that trained and finished: programs without a Trainer report nothing else. A process
    that never trained (a launcher, a helper) has no peak to show."""
    if role.trains():
        peak, measure = memcap.peak()
        safely(files.append_progress, {"peak": peak, "peak_measure": measure, "pid": os.getpid()})


def _chain_excepthook() -> None:
    previous = sys.excepthook

    def excepthook(cls, exc, tb):
        common.fatal(exc)
        previous(cls, exc, tb)

    sys.excepthook = excepthook
