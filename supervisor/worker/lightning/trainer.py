"""PyTorch Lightning 2.x (`import lightning.pytorch` or `import pytorch_lightning`), with nothing in the
script changed: observe the program's own `Trainer(precision=..., accumulate_grad_batches=...)` and its
`batch_size`, apply the plan to them, report each optimizer step, record the failure, save the emergency
checkpoint after an OOM, resume from it, and stop at a step boundary on SIGTERM.

This module patches Lightning where the plan goes in: the Trainer's arguments, `fit` (the resume, the
failure), the train DataLoaders before they are iterated, and Lightning's own batch search, which the
supervisor replaces. What happens during fit is `callback.py`'s: a Callback the Trainer gets.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import signal
import sys
from pathlib import Path
from typing import Any

from oomladder.worker import common
from oomladder.worker.common import is_memory_failure, observe, peer_died, safely, stop_at_step_end_on
from oomladder.worker.hooks import memcap
from oomladder.worker.lightning.callback import FitFollower, callback_class
from oomladder.worker.lightning.checkpoint import CHECKPOINT_FILE, save_after_oom
from oomladder.worker.lightning.program import batch_size_of
from oomladder.worker.protocol import files, probe
from oomladder.worker.recovery import emergency
from oomladder.worker.state import STATE

_ROOTS = ("pytorch_lightning", "lightning.pytorch")  # the two packages Lightning 2.x installs as
HOOKS = {
    **{f"{root}.trainer.trainer": (lambda module: patch_trainer(module)) for root in _ROOTS},
    **{f"{root}.loops.fit_loop": (lambda module: patch_fit_loop(module)) for root in _ROOTS},
    **{f"{root}.callbacks.batch_size_finder": (lambda module: patch_batch_size_finder(module)) for root in _ROOTS},
}

# Lightning's precision flags, as the plan names them. 64-bit and Transformer Engine have no rung: unknown.
_PRECISIONS = {"32": "fp32", "32-true": "fp32", "bf16": "bf16", "bf16-mixed": "bf16", "bf16-true": "bf16",
               "16": "fp16", "16-mixed": "fp16", "16-true": "fp16"}
# What the plan's precision asks of Lightning: mixed precision, as the Trainer's bf16=True is.
_FLAGS = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
_TUNERS = ("BatchSizeFinder", "LearningRateFinder")

# Where each plan field goes in a Lightning fit: these to the Trainer's own arguments (apply_to_trainer_arguments);
# the micro-batch to the module's `batch_size`, where Lightning's BatchSizeFinder sets it, the DataLoader workers to
# the train DataLoader, and gradient checkpointing to a Transformers model inside the module (all three in
# callback.py). The load's fields are from_pretrained's (transformers/loading.py).
TRAINER_ARGUMENTS = {"gradient_accumulation_steps": "accumulate_grad_batches", "precision": "precision"}


def precision_of(flag: Any) -> str | None:
    """The plan's name for a Lightning precision flag (None, the Trainer's default, is 32-true)."""
    return "fp32" if flag is None else _PRECISIONS.get(str(flag))


def precision_flag(precision: str) -> str:
    return _FLAGS[precision]


# --- the Trainer -----------------------------------------------------------------------------------------

def patch_trainer(module) -> None:
    cls = module.Trainer
    root = module.__name__.rsplit(".trainer.trainer", 1)[0]
    original_init, original_fit = cls.__init__, cls.fit

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        memcap.arm()
        own = safely(own_settings, kwargs) or {}  # read before the plan changes them
        if own:
            safely(apply_to_trainer_arguments, kwargs, own, common.plan())
        original_init(self, *args, **kwargs)
        if own:
            safely(_attach, self, root, own)

    @functools.wraps(original_fit)
    def fit(self, *args, **kwargs):
        ours = _ours(self)
        if ours is None or _is_tuning(self):  # Lightning's Tuner fits to search, then restores: not training
            return original_fit(self, *args, **kwargs)
        memcap.arm()
        if not STATE.resumed:
            STATE.resumed = True
            args, kwargs = safely(_resume_from_emergency, ours, original_fit, self, args, kwargs) or (args, kwargs)
        safely(stop_at_step_end_on, signal.SIGTERM, signal.SIGINT)
        try:
            return original_fit(self, *args, **kwargs)
        except Exception as exc:
            safely(_record_failure, self, ours, exc)
            # Rank 0 saves the last whole step also when a peer's OOM broke the collective it waited in.
            if is_memory_failure(exc) or peer_died(exc):
                safely(save_after_oom, self, ours, exc)
            raise

    cls.__init__, cls.fit = __init__, fit


def own_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The program's own settings, as the Trainer will read them: its arguments, else PL_TRAINER_* variables."""
    plugins = kwargs.get("plugins")
    plugins = plugins if isinstance(plugins, (list, tuple)) else [plugins] if plugins is not None else []
    callbacks = kwargs.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, (list, tuple)) else [callbacks]
    return {"precision": precision_of(kwargs.get("precision", _env("precision"))),
            "precision_plugin": any("Precision" in k.__name__ for p in plugins for k in type(p).__mro__),
            "accumulation": kwargs.get("accumulate_grad_batches", _env("accumulate_grad_batches") or 1),
            "accumulation_scheduled": any(_is_a(cb, "GradientAccumulationScheduler") for cb in callbacks),
            "limit_train_batches": kwargs.get("limit_train_batches", _env("limit_train_batches")),
            "val_check_interval": kwargs.get("val_check_interval", _env("val_check_interval"))}


def _env(name: str) -> Any:
    value = os.environ.get(f"PL_TRAINER_{name.upper()}")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def apply_to_trainer_arguments(kwargs: dict[str, Any], own: dict[str, Any], p: dict[str, Any]) -> None:
    """The plan's accumulation and precision, as `Trainer(...)` arguments."""
    accumulation = p.get("gradient_accumulation_steps")
    if own["accumulation_scheduled"]:
        accumulation = None  # its schedule sets the accumulation each epoch: never observed, never planned
    if accumulation is not None and accumulation != own["accumulation"]:
        kwargs[TRAINER_ARGUMENTS["gradient_accumulation_steps"]] = accumulation
        # Whole-number limits count micro-batches: k times smaller micro-batches, k times as many, the same data.
        factor, rest = divmod(accumulation, own["accumulation"])
        for name in ("limit_train_batches", "val_check_interval"):
            value = own[name]
            if not rest and isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                kwargs[name] = value * factor
    if p.get("precision") is not None and p["precision"] != own["precision"]:
        if own["precision_plugin"]:  # Lightning refuses a precision flag beside a precision plugin
            print("oomladder: the program passes its own precision plugin: the plan's precision "
                  f"{p['precision']} is not applied", file=sys.stderr)
        else:
            kwargs[TRAINER_ARGUMENTS["precision"]] = precision_flag(p["precision"])
            own["precision_changed"] = True


def _attach(trainer, root: str, own: dict[str, Any]) -> None:
    callback = callback_class(root)(own)
    # After Lightning's tuner callbacks (their searches run first and are not training), before the program's
    # callbacks: a step is reported executed even when one of the program's callbacks then fails.
    tuners = [i for i, cb in enumerate(trainer.callbacks) if _is_tuner(cb)]
    trainer.callbacks.insert(tuners[-1] + 1 if tuners else 0, callback)
    # The program's own precision: what it asked for when the plan changed it, else what the Trainer resolved
    # (16-mixed, say, that Lightning turns into bf16-mixed on the CPU). A precision plugin of the program's own
    # is never replaced: unknown, the bf16 rung skips rather than change nothing.
    precision = (None if own["precision_plugin"] else own["precision"] if own.get("precision_changed")
                 else precision_of(trainer.precision))
    # Under a GradientAccumulationScheduler the accumulation changes by epoch: left unknown, the batch rungs skip
    # rather than halve a batch whose accumulation the schedule would then set back.
    accumulation = None if own["accumulation_scheduled"] else own["accumulation"]
    observe({"gradient_accumulation_steps": accumulation, "precision": precision,
             "world_size": trainer.world_size}, _device_facts(trainer.strategy.root_device))


def _ours(trainer):
    return next((cb for cb in trainer.callbacks if isinstance(cb, FitFollower)), None)


def _device_facts(device) -> dict[str, Any]:
    import torch
    bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else device.type in ("cpu", "xpu", "mps")
    memory = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    return {"device": device.type, "bf16_supported": bool(bf16), "device_memory": memory}


def _is_a(obj, *names: str) -> bool:
    """An instance of a Lightning class of that name, from whichever package: no Lightning import needed."""
    return any(k.__name__ in names for k in type(obj).__mro__)


def _is_tuner(callback) -> bool:
    return _is_a(callback, *_TUNERS)


def _is_tuning(trainer) -> bool:
    """A fit that Lightning's Tuner runs to search a batch size or learning rate, then exits."""
    return any(_is_tuner(cb) and getattr(cb, "_early_exit", False) for cb in trainer.callbacks)


def _resume_from_emergency(ours, original_fit, trainer, args, kwargs):
    """Continue where the OOM struck, whatever `ckpt_path` the script passes."""
    point = emergency.resume_point()
    if not point:
        return args, kwargs
    checkpoint = Path(point) / CHECKPOINT_FILE
    if not checkpoint.is_file():
        why = f"{point} holds no Lightning checkpoint ({CHECKPOINT_FILE})"
        files.append_progress({"resume_failed": why})
        print(f"oomladder: cannot resume: {why}; this attempt starts from step 0", file=sys.stderr, flush=True)
        return args, kwargs
    signature = inspect.signature(original_fit)
    bound = signature.bind(trainer, *args, **kwargs)
    bound.arguments["ckpt_path"] = str(checkpoint)
    if "weights_only" in signature.parameters:
        bound.arguments["weights_only"] = False  # written by this run, with RNG states that are not plain tensors
    ours.resuming = True
    return bound.args[1:], bound.kwargs


def _record_failure(trainer, ours, exc: BaseException) -> None:
    peak, measure = memcap.peak()
    files.write_failure(exc, step=trainer.global_step, max_steps=ours.max_steps, phase=STATE.phase,
                        peak=peak, peak_measure=measure, batch_shape=probe.batch_shapes()["current"])


# --- the train DataLoaders and Lightning's own batch search ----------------------------------------------------

def patch_fit_loop(module) -> None:
    """The fit loop processes each train DataLoader here, before it iterates it: the last moment to set its
    workers and to place a resumed epoch's data."""
    original = module._process_dataloader

    @functools.wraps(original)
    def _process_dataloader(trainer, trainer_fn, stage, dataloader):
        dataloader = original(trainer, trainer_fn, stage, dataloader)
        ours = _ours(trainer)
        if ours is not None:
            safely(ours.train_loader_ready, trainer, dataloader)
        return dataloader

    module._process_dataloader = _process_dataloader


def patch_batch_size_finder(module) -> None:
    """The supervisor, not Lightning, chooses the batch. The finder shrinks the batch in-process without raising
    the accumulation, so it changes the effective batch; here it keeps the batch the plan set."""
    cls = module.BatchSizeFinder
    original = cls.scale_batch_size
    root = module.__name__.rsplit(".callbacks.batch_size_finder", 1)[0]

    @functools.wraps(original)
    def scale_batch_size(self, trainer, pl_module):
        if getattr(trainer.state.fn, "value", trainer.state.fn) != "fit":  # evaluation only: no training changes
            return original(self, trainer, pl_module)
        self.optimal_batch_size = batch_size_of(pl_module, importlib.import_module(f"{root}.utilities.parsing"))
        print(f"oomladder: Lightning's batch size search is off; the batch stays {self.optimal_batch_size}, "
              f"as the plan sets it", file=sys.stderr, flush=True)
        if self._early_exit:
            raise importlib.import_module(f"{root}.utilities.exceptions")._TunerExitException()

    cls.scale_batch_size = scale_batch_size
