"""The run: the loop (loop.py) launches attempts, the watcher (watch.py) sees each through, and a pure
`decide` (decide.py) says what comes next; budgets, the run's configuration and its typed outcomes
beside them."""

from oomladder.run.config import RunConfig
from oomladder.run.loop import Runner

__all__ = ["RunConfig", "Runner"]
