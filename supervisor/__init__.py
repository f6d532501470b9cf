"""oomladder's supervisor: launch a training command, catch out-of-memory deaths, walk a ladder.

Kept import-light on purpose: the worker-side adapter imports from this package inside every
training process, so nothing here may pull in torch, rich or the runner.
"""

__version__ = "0.1.0"



def load_ipython_extension(ipython):
    """`%load_ext oomladder` in an IPython or Jupyter kernel (oomladder/notebook): imported only there."""
    from oomladder.notebook.extension import load
    load(ipython)


def unload_ipython_extension(ipython):
    from oomladder.notebook.extension import unload
    unload(ipython)
