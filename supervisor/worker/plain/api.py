"""The public API for a plain PyTorch program that wants what the framework adapters give: the plan, steps
counted, no step lost or repeated. About ten lines in the program (docs/frameworks.md, "Plain PyTorch"):

    from oomladder import api

    plan = api.plan(per_device_train_batch_size=16, gradient_accumulation_steps=1, precision="fp32")
    session = api.session(model=model, optimizer=optimizer, scheduler=scheduler)
    start = session.resume()                      # the step to continue after: 0, or where a checkpoint ended
    for step in range(start + 1, max_steps + 1):
        ...  # one optimizer step of plan.per_device_train_batch_size x plan.gradient_accumulation_steps samples
        session.step_done(step)

`plan` tells oomladder the program's own settings and returns them with the plan's changes. `session`
keeps the objects whose `state_dict` makes the program's state; after an out-of-memory error it saves the
last finished step (not for an OOM inside `optimizer.step`, which it watches), and the next attempt's
`resume` loads it. On SIGTERM the step in flight finishes, is saved, and the program exits 128+signal.
Run without oomladder, `plan` returns what it was given and `session` saves nothing.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path
from typing import Any

from oomladder.plan import Plan
from oomladder.worker import common
from oomladder.worker.hooks import memcap
from oomladder.worker.protocol import files
from oomladder.worker.recovery import emergency
from oomladder.worker.state import STATE

# The plan's fields a plain program takes through `plan()` and applies itself (the rest: from_pretrained's, or none).
_SETTINGS = ("per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size", "precision",
             "gradient_checkpointing", "dataloader_num_workers", "optim")


def plan(**own: Any) -> Plan:
    """Tell oomladder the program's own settings (any of `_SETTINGS`) and get them back with the plan's, as the
    supervisor's own `Plan` (its `effective_batch` counts the processes that train together)."""
    unknown = sorted(set(own) - set(_SETTINGS))
    if unknown:
        raise TypeError(f"api.plan() takes {', '.join(_SETTINGS)}; not {', '.join(unknown)}")
    if not _supervised():
        return Plan(**own, world_size=_world())
    common.safely(common.observe, {**own, "world_size": _world()})
    return Plan(**{**own, **{k: v for k, v in common.plan().items() if k in _SETTINGS}}, world_size=_world())


def session(**state: Any) -> Session:
    """The objects whose `state_dict()` / `load_state_dict()` make the program's state (model, optimizer,
    scheduler, a GradScaler, anything with both methods)."""
    return Session(state)


class Session:
    def __init__(self, state: dict[str, Any]) -> None:
        for name, obj in state.items():
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise TypeError(f"api.session(): {name} has no state_dict()/load_state_dict()")
        self.state, self.step, self.in_optimizer_step = state, 0, False
        if _supervised():
            memcap.arm()
            for obj in state.values():
                if hasattr(obj, "step") and hasattr(obj, "param_groups"):
                    self._watch(obj)
            STATE.owner = STATE.owner or "oomladder.api"
            STATE.on_fatal.append(self._after_failure)
            common.safely(common.stop_at_step_end_on, signal.SIGTERM, signal.SIGINT)

    def resume(self) -> int:
        """Load the checkpoint oomladder named for this attempt, if any: the step to continue after."""
        if not _supervised():
            return 0
        import torch
        path = emergency.resume_point()
        if path:
            saved = torch.load(Path(path) / "state.pt", weights_only=False)
            for name, obj in self.state.items():
                obj.load_state_dict(saved[name])
            self.step = int((files.read_json(Path(path) / files.CHECKPOINT_MARKER) or {}).get("step", 0))
            _restore_rng(saved.get("__rng__") or {})
        STATE.step = self.step
        files.append_progress({"began_at": self.step, "max_steps": None})
        return self.step

    def step_done(self, step: int | None = None) -> None:
        """The optimizer step `step` (default: the next one) is finished."""
        if not _supervised():
            return
        self.step = self.step + 1 if step is None else step
        STATE.step = self.step
        emergency.snapshot_rng()
        emergency.keep_step_end(tuple(obj for obj in self.state.values() if hasattr(obj, "modules")))
        peak, measure = memcap.peak()
        files.append_progress({"step": self.step, "max_steps": None, "phase": "train", "peak": peak,
                               "peak_measure": measure, "executed": True})
        if STATE.stop_requested:
            signum = STATE.stop_requested
            self._save("stopped")
            print(f"oomladder: stopped by {signal.Signals(signum).name} after step {self.step}, which is saved",
                  file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)

    # --- the emergency checkpoint -------------------------------------------------------------------------

    def _watch(self, optimizer) -> None:
        original = optimizer.step

        @functools.wraps(original)
        def step(*args, **kwargs):
            self.in_optimizer_step = True
            try:
                return original(*args, **kwargs)
            finally:
                self.in_optimizer_step = False

        optimizer.step = step

    def _after_failure(self, exc: BaseException) -> None:
        if not common.is_memory_failure(exc):
            return
        if (why := emergency.nothing_to_keep(self.step, self.in_optimizer_step)) is not None:
            emergency.skip(why)
            return
        emergency.free_failed_step(exc, *self.state.values())
        if (why := emergency.back_to_step_end()) is not None:
            emergency.skip(why)
            return
        self._save("oom")

    def _save(self, why: str) -> None:
        if int(os.environ.get("RANK", "0") or 0) != 0:
            return  # data parallel: rank 0 holds the same state
        import torch
        try:
            partial = emergency.begin(self.step, sum(_tensor_bytes(obj.state_dict()) for obj in self.state.values()))
        except emergency.NoRoom as exc:
            emergency.skip(str(exc))
            return
        torch.save({**{name: obj.state_dict() for name, obj in self.state.items()},
                    "__rng__": emergency.rng_snapshot()}, partial / "state.pt")
        emergency.commit(partial, self.step, None, "oomladder.api", why=why)


def _restore_rng(rng: dict[str, Any]) -> None:
    import random

    import torch
    if "python" in rng:
        random.setstate(rng["python"])
    if "cpu" in rng:
        torch.random.set_rng_state(rng["cpu"])
    if "numpy" in rng:
        import numpy as np
        np.random.set_state(rng["numpy"])
    if "cuda" in rng and torch.cuda.is_available():
        (torch.cuda.random.set_rng_state_all if isinstance(rng["cuda"], list) else torch.cuda.random.set_rng_state)(
            rng["cuda"])


def _supervised() -> bool:
    return bool(os.environ.get("OOMLADDER_ATTEMPT_DIR"))


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _tensor_bytes(state: Any) -> int:
    import torch
    if torch.is_tensor(state):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_tensor_bytes(v) for v in state)
    return 0
