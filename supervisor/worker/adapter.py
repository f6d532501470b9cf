"""The worker adapter: installed from sitecustomize before the user's program runs.

It patches, when (and only if) the program imports them, one framework at a time: the Hugging Face
Trainer (trainer.py), model loading (loading.py), torch itself (torch_hooks.py), and PyTorch Lightning
(lightning.py). Patching happens in a post-import hook, so a program pays only for the frameworks it
imports. It also records the exception that kills the process and the peak of a process that ends.
"""

from __future__ import annotations

import atexit
import sys

from oomladder.worker import common, files, lightning, loading, memcap, torch_hooks, trainer
from oomladder.worker.common import safely
from oomladder.worker.importhook import PostImportFinder

FRAMEWORKS = (trainer, loading, torch_hooks, lightning)


def install() -> None:
    hooks = {name: hook for framework in FRAMEWORKS for name, hook in framework.HOOKS.items()}
    for name, hook in list(hooks.items()):
        if name in sys.modules:
            safely(hook, sys.modules[name])
            del hooks[name]
    sys.meta_path.insert(0, PostImportFinder(hooks, safely))
    _chain_excepthook()
    atexit.register(_report_exit)


def _report_exit() -> None:
    """The peak of a worker that finished: programs without a Trainer report nothing else."""
    if common.launcher[0]:
        return
    peak, measure = memcap.peak()
    safely(files.append_progress, {"peak": peak, "peak_measure": measure})


def _chain_excepthook() -> None:
    previous = sys.excepthook

    def excepthook(cls, exc, tb):
        if not isinstance(exc, KeyboardInterrupt) and not common.launcher[0]:
            peak, measure = memcap.peak()
            safely(files.write_failure, exc, phase=common.phase[0], peak=peak, peak_measure=measure, step=None)
        previous(cls, exc, tb)

    sys.excepthook = excepthook
