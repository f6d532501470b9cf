"""oomladder's supervisor: launch a training command, catch out-of-memory deaths, walk a ladder.

Kept import-light on purpose: the worker-side adapter imports from this package inside every
training process, so nothing here may pull in torch, rich or the runner.
"""

__version__ = "0.1.0"

