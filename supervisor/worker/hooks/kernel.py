"""A Jupyter kernel (IPython) that trains: a notebook run unattended (papermill, `jupyter nbconvert --execute`)
starts it as a child process, so it is reached like any other (worker/protocol/role.py).

A cell's exception never reaches `sys.excepthook`: IPython shows it and the kernel lives on, until the runner
stops at the failed cell and shuts the kernel down. Showing it is where the kernel's failure is recorded, as the
excepthook records a script's.
"""

from __future__ import annotations

import functools
import sys

from oomladder.worker.common import fatal, safely

HOOKS = {"IPython.core.interactiveshell": lambda module: patch_shell(module)}


def patch_shell(module) -> None:
    cls = module.InteractiveShell
    original = cls.showtraceback

    @functools.wraps(original)
    def showtraceback(self, exc_tuple=None, *args, **kwargs):
        exc = (exc_tuple or sys.exc_info())[1]
        if isinstance(exc, BaseException):
            safely(fatal, exc)
        return original(self, exc_tuple, *args, **kwargs)

    cls.showtraceback = showtraceback
