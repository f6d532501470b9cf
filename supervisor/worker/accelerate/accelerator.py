"""A custom training loop on Hugging Face accelerate, with nothing of oomladder in it.

What is applied, through the `Accelerator` the program builds and the objects it passes to `prepare`:
- `gradient_accumulation_steps` and `mixed_precision` from the plan;
- the plan's per-device batch: the training DataLoader is rebuilt on the same dataset and sampler, so
  the sample order is unchanged and k micro-batches hold what one batch held;
- gradient checkpointing (non-reentrant) on a Hugging Face model passed to `prepare`.

A loop that never enters `accelerator.accumulate()` still accumulates: each `accelerator.backward`
counts a micro-batch and sets `sync_gradients`, so the prepared optimizer, scheduler and `zero_grad`
act once per optimizer step, as they do under `accumulate()`; accelerate already divides the loss.

Each optimizer step the prepared optimizer really takes is reported, with its loss. After an out-of-memory
error the last finished step is saved with accelerate's own `save_state` (its RNG replaced by the one the step
left, the steps' losses in its marker). The next attempt fast-forwards the program's own loop through the steps
already trained, without computing them (recovery/fast_forward.py), so that its step counter, epoch and schedule read as
in a continuous run, then loads the checkpoint before the next step's data is used. The training DataLoader is the
first one passed to `prepare`.
"""

from __future__ import annotations

import functools
import signal
from typing import Any

from oomladder.worker import common
from oomladder.worker.accelerate import progress
from oomladder.worker.common import observe, safely
from oomladder.worker.hooks import memcap
from oomladder.worker.protocol import probe
from oomladder.worker.state import STATE

HOOKS = {"accelerate.accelerator": lambda module: patch_accelerator(module),
         "accelerate.optimizer": lambda module: patch_optimizer(module)}
# accelerate's mixed_precision, as the plan names it
_PRECISIONS = {"no": "fp32", "bf16": "bf16", "fp16": "fp16", "fp8": "fp8"}

# Where each plan field goes in an accelerate loop: the Accelerator's own arguments, and the training DataLoader's
# (rebuilt on the same dataset and sampler, _before_prepare). Gradient checkpointing goes to a Hugging Face model
# passed to prepare; the other fields are from_pretrained's (transformers/loading.py) or not an accelerate loop's.
ACCELERATOR = {"gradient_accumulation_steps": "gradient_accumulation_steps", "precision": "mixed_precision"}
DATALOADER = {"per_device_train_batch_size": "batch_size", "dataloader_num_workers": "num_workers"}


def patch_accelerator(module) -> None:
    cls = module.Accelerator
    cls.__init__, cls.prepare = _init(cls.__init__), _prepare(cls.prepare)
    cls.backward, cls.accumulate = _backward(cls.backward), _accumulate(cls.accumulate)
    for name in ("save_state", "save_model", "save", "log"):
        setattr(cls, name, _held_while_replaying(getattr(cls, name)))
    for name in ("unwrap_model", "end_training"):
        setattr(cls, name, _load_first(getattr(cls, name)))
    STATE.on_fatal.append(progress.save_after_failure)


def _init(original):
    """The program's Accelerator, built with the plan's arguments (ACCELERATOR); the Trainer's own is left to the
    Trainer's adapter."""
    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        if STATE.owner not in (None, "accelerate"):  # the Trainer's own Accelerator: its adapter applies the plan
            return original(self, *args, **kwargs)
        STATE.owner = "accelerate"
        plan = common.plan()
        _apply_to_arguments(kwargs, plan)
        program = {"gradient_accumulation_steps": kwargs.get("gradient_accumulation_steps", 1)}
        original(self, *args, **kwargs)
        STATE.accelerate.accelerator = self
        memcap.arm()
        safely(observe, {**_program_settings(self), **{k: v for k, v in program.items() if k not in plan}},
               _facts(self))
        safely(common.stop_at_step_end_on, signal.SIGTERM, signal.SIGINT)
    return __init__


def _prepare(original):
    """`prepare`: the training DataLoader and the model take the plan first; the model moves to the device (the
    load phase)."""
    @functools.wraps(original)
    def prepare(self, *objects, **kwargs):
        loop = STATE.accelerate
        if self is not loop.accelerator:
            return original(self, *objects, **kwargs)
        objects = tuple(safely(_before_prepare, self, obj) or obj for obj in objects)
        with common.loading():  # the model moves to the device here
            prepared = original(self, *objects, **kwargs)
        for given, obj in zip(objects, prepared if isinstance(prepared, tuple) else (prepared,)):
            if given is loop.loader and loop.prepared is None:
                safely(_watch_loader, obj)
        return prepared
    return prepare


def _backward(original):
    """`backward`: a micro-batch counted where no accumulate() counts it, its loss noted; nothing while
    fast-forwarding."""
    @functools.wraps(original)
    def backward(self, loss, **kwargs):
        loop = STATE.accelerate
        if self is not loop.accelerator:
            return original(self, loss, **kwargs)
        if not loop.accumulate_seen and self.gradient_accumulation_steps > 1:
            # No accumulate() around this loop: count micro-batches here, so the prepared optimizer steps once
            # per optimizer step of the plan.
            loop.micro += 1
            self.gradient_state._set_sync_gradients(loop.micro % self.gradient_accumulation_steps == 0)
        if loop.replay is not None:
            return None  # fast-forwarding: nothing was computed, nothing to differentiate
        safely(progress.note_loss, loss)
        return original(self, loss, **kwargs)
    return backward


def _accumulate(original):
    @functools.wraps(original)
    def accumulate(self, *models):
        STATE.accelerate.accumulate_seen = True
        return original(self, *models)
    return accumulate


def _held_while_replaying(original):
    """Saving and logging while fast-forwarding: nothing (the weights are not the trained ones yet, and the steps
    were logged when they ran); once the checkpoint is due, it is loaded first."""
    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        loop = STATE.accelerate
        if self is loop.accelerator:
            progress.load_if_due()
            if loop.replay is not None:
                return None
        return original(self, *args, **kwargs)
    return wrapper


def _load_first(original):
    """What a loop calls after its last step (unwrap_model before save_pretrained, end_training): the checkpoint
    first, if the replay has reached it."""
    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        if self is STATE.accelerate.accelerator:
            progress.load_if_due()
        return original(self, *args, **kwargs)
    return wrapper


def patch_optimizer(module) -> None:
    cls = module.AcceleratedOptimizer
    original_step = cls.step

    @functools.wraps(original_step)
    def step(self, *args, **kwargs):
        loop = STATE.accelerate
        if loop.accelerator is None:
            return original_step(self, *args, **kwargs)
        syncing = self.gradient_state.sync_gradients
        if loop.replay is not None:  # fast-forwarding: the step was taken by an earlier attempt
            if syncing:
                self.optimizer._opt_called = True  # as a step would: the program's scheduler steps after it
                progress.replayed()
            return None
        loop.in_step = syncing
        result = original_step(self, *args, **kwargs)
        loop.in_step = False
        if syncing and not getattr(self, "step_was_skipped", False):
            safely(progress.stepped)
        return result

    cls.step = step


# --- what the program asked for, and the plan --------------------------------------------------------------

def _program_settings(accelerator) -> dict[str, Any]:
    return {"precision": _PRECISIONS.get(str(accelerator.mixed_precision), str(accelerator.mixed_precision)),
            "world_size": accelerator.num_processes}


def _facts(accelerator) -> dict[str, Any]:
    import torch
    device = accelerator.device.type
    bf16 = torch.cuda.is_bf16_supported() if device == "cuda" else device in ("cpu", "xpu", "mps")
    memory = torch.cuda.get_device_properties(accelerator.device).total_memory if device == "cuda" else None
    return {"device": device, "bf16_supported": bool(bf16), "device_memory": memory}


def _apply_to_arguments(kwargs: dict[str, Any], plan: dict[str, Any]) -> None:
    """The plan's fields as the Accelerator's arguments (ACCELERATOR). A gradient_accumulation_plugin of the
    program's own keeps its accumulation (accelerate refuses both)."""
    for field, argument in ACCELERATOR.items():
        value = plan.get(field)
        if value is None or (argument == "gradient_accumulation_steps" and "gradient_accumulation_plugin" in kwargs):
            continue
        kwargs[argument] = {"fp32": "no"}.get(value, value) if field == "precision" else value


def _before_prepare(accelerator, obj):
    """The training DataLoader with the plan's batch (same dataset, sampler and order); a model with the plan's
    gradient checkpointing."""
    loop = STATE.accelerate
    from torch.utils.data import DataLoader
    plan = common.plan()
    if isinstance(obj, DataLoader) and loop.loader is None and obj.batch_size is not None:
        observe({"per_device_train_batch_size": obj.batch_size, "dataloader_num_workers": obj.num_workers,
                 **({"gradient_accumulation_steps": accelerator.gradient_accumulation_steps}
                    if "gradient_accumulation_steps" not in plan else {})})
        wanted = {argument: plan.get(field, getattr(obj, argument)) for field, argument in DATALOADER.items()}
        workers = wanted["num_workers"]
        if any(getattr(obj, argument) != value for argument, value in wanted.items()):
            obj = DataLoader(obj.dataset, batch_size=wanted["batch_size"], sampler=obj.sampler,
                             collate_fn=obj.collate_fn, num_workers=workers, pin_memory=obj.pin_memory,
                             drop_last=obj.drop_last, timeout=obj.timeout, worker_init_fn=obj.worker_init_fn,
                             generator=obj.generator,
                             **({"prefetch_factor": obj.prefetch_factor,
                                 "persistent_workers": obj.persistent_workers} if workers else {}))
        loop.loader = obj
        return obj
    if hasattr(obj, "gradient_checkpointing_enable") and hasattr(obj, "config"):
        STATE.observed["model"] = safely(probe.model_report, obj)
        new = hasattr(obj, "activation_checkpointing_enable")  # Transformers 5 renamed it (the old names warn)
        observe({"gradient_checkpointing": bool(getattr(obj, "is_activation_checkpointing" if new else
                                                        "is_gradient_checkpointing", False))}, _model_facts(obj))
        if plan.get("gradient_checkpointing"):
            if new:
                obj.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                obj.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(obj, "enable_input_require_grads"):
                obj.enable_input_require_grads()  # LoRA: the checkpointed layers' inputs must carry gradients
    return obj


def _watch_loader(prepared) -> None:
    """The prepared training DataLoader: it resumes on its first iteration, passes over the micro-batches an
    earlier attempt trained on, and notes each batch's shape for the estimator."""
    STATE.accelerate.prepared = prepared
    cls = type(prepared)
    if getattr(cls, "_oomladder_iter", False):
        return
    original_iter = cls.__iter__

    def __iter__(self):
        loop = STATE.accelerate
        if self is not loop.prepared:
            yield from original_iter(self)
            return
        safely(progress.begin)
        for batch in original_iter(self):
            progress.load_if_due()  # the replay has reached the checkpoint: this batch is the first one to train on
            if loop.replay is None:
                safely(probe.note_batch, batch)
            yield batch
        progress.load_if_due()

    cls.__iter__ = __iter__
    cls._oomladder_iter = True

def _model_facts(model) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"base_frozen": bool(hasattr(model, "peft_config") and trainable < total),
            "trainable_fraction": round(trainable / total, 6) if total else None}


