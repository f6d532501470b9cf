"""Hooks on torch itself, for programs with or without transformers: the memory cap before the
optimizer (the last moment before training allocates), DataLoader workers freed from it, and the
launcher process told apart from the ranks it starts."""

from __future__ import annotations

import functools
import os

from oomladder.worker.common import safely
from oomladder.worker.hooks import memcap
from oomladder.worker.protocol import role
from oomladder.worker.state import STATE

HOOKS = {
    "torch.optim.optimizer": lambda module: patch_optimizer(module),
    "torch.utils.data._utils.worker": lambda module: patch_dataloader_worker(module),
    "torch.distributed.launcher.api": lambda module: mark_launcher(module),
}


def patch_optimizer(module) -> None:
    cls = module.Optimizer
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        memcap.arm()  # the last moment before training allocates: weights exist, the rest counts
        return original(self, *args, **kwargs)

    cls.__init__ = __init__


def patch_dataloader_worker(module) -> None:
    original = module._worker_loop

    @functools.wraps(original)
    def _worker_loop(*args, **kwargs):
        safely(memcap.lift_in_child)
        STATE.reporting = False  # a forked DataLoader worker is the program's helper, not the worker
        return original(*args, **kwargs)

    module._worker_loop = _worker_loop


def mark_launcher(module) -> None:
    """torchrun, accelerate launch and notebook_launcher all start ranks through torch's elastic launcher.
    The launcher's own process has no RANK: left alone, it would report its peak and its ChildFailedError
    as rank 0's."""
    if "RANK" not in os.environ:
        role.mark_launcher()  # the ranks it starts speak for the worker
