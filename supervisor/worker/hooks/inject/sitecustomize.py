"""Loaded by Python at start-up because the supervisor puts this folder first on PYTHONPATH.

PYTHONPATH survives launchers (torchrun, accelerate launch) that pass the environment on, so
every rank gets the adapter without a change to the user's script.
"""

import os
import sys


def _install():
    if not os.environ.get("OOMLADDER_ATTEMPT_DIR"):
        return
    try:
        _load_own_oomladder()
        from oomladder.worker import adapter
        adapter.install()
    except Exception as exc:  # never break the user's program because the adapter could not load
        print(f"oomladder: the worker adapter could not load ({exc!r}); the plan is not applied", file=sys.stderr)


def _load_own_oomladder():
    """The oomladder this file belongs to, whatever the program's interpreter has installed: the worker's
    side of the protocol is then always the supervisor's own version (another environment may hold
    another oomladder, or none)."""
    if "oomladder" in sys.modules:
        return
    import importlib.util
    root = os.path.abspath(__file__)
    for _ in range(4):  # hooks/inject/sitecustomize.py, in the package's worker folder
        root = os.path.dirname(root)
    spec = importlib.util.spec_from_file_location("oomladder", os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    module = importlib.util.module_from_spec(spec)
    sys.modules["oomladder"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["oomladder"]
        raise


def _chain_next_sitecustomize():
    """Run the sitecustomize this one shadows, if the environment had one."""
    import importlib.machinery
    import importlib.util
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec and spec.loader and spec.origin and os.path.abspath(spec.origin) != os.path.abspath(__file__):
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_install()
try:
    _chain_next_sitecustomize()
except Exception as exc:
    print(f"oomladder: the environment's own sitecustomize failed: {exc!r}", file=sys.stderr)
