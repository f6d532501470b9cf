"""oomladder's public API for plain PyTorch programs: `from oomladder import api`, then `api.plan(...)`,
`api.session(...)`, `session.resume()` and `session.step_done(step)` (docs/frameworks.md, "Plain PyTorch"). The code
runs inside the training process: it lives with the worker adapter (worker/plain/api.py)."""

from oomladder.worker.plain.api import Plan, Session, plan, session

__all__ = ["Plan", "Session", "plan", "session"]
