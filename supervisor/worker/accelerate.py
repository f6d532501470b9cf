"""A custom training loop on Hugging Face accelerate, with nothing of oomladder in it.

What is applied, through the `Accelerator` the program builds and the objects it passes to `prepare`:
- `gradient_accumulation_steps` and `mixed_precision` from the plan;
- the plan's per-device batch: the training DataLoader is rebuilt on the same dataset and sampler, so
  the sample order is unchanged and k micro-batches hold what one batch held;
- gradient checkpointing (non-reentrant) on a Hugging Face model passed to `prepare`.

A loop that never enters `accelerator.accumulate()` still accumulates: each `accelerator.backward`
counts a micro-batch and sets `sync_gradients`, so the prepared optimizer, scheduler and `zero_grad`
act once per optimizer step, as they do under `accumulate()`; accelerate already divides the loss.

Each optimizer step the prepared optimizer really takes is reported. After an out-of-memory error the
last finished step is saved with accelerate's own `save_state` (its RNG replaced by the one the step
left), and the next attempt loads it when the training DataLoader is first iterated, then passes over
the micro-batches already trained on. The training DataLoader is the first one passed to `prepare`.
"""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path
from typing import Any

from oomladder.worker import common, emergency, files, memcap, probe
from oomladder.worker.common import observe, safely

HOOKS = {"accelerate.accelerator": lambda module: patch_accelerator(module),
         "accelerate.optimizer": lambda module: patch_optimizer(module)}
_PRECISIONS = {"no": "fp32", "bf16": "bf16", "fp16": "fp16", "fp8": "fp8"}

_run: dict[str, Any] = {"accelerator": None, "step": 0, "micro": 0, "began": False, "loader": None,
                        "prepared": None, "in_step": False, "accumulate_seen": False, "skip": 0, "skip_epochs": 0}


def patch_accelerator(module) -> None:
    cls = module.Accelerator
    original_init, original_prepare, original_backward = cls.__init__, cls.prepare, cls.backward
    original_accumulate = cls.accumulate

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        if common.owner[0] not in (None, "accelerate"):  # the Trainer's own Accelerator: its adapter applies the plan
            return original_init(self, *args, **kwargs)
        common.owner[0] = "accelerate"
        plan = common.plan()
        if plan.get("gradient_accumulation_steps") is not None and "gradient_accumulation_plugin" not in kwargs:
            kwargs["gradient_accumulation_steps"] = plan["gradient_accumulation_steps"]
        if plan.get("precision") is not None:
            kwargs["mixed_precision"] = {"fp32": "no"}.get(plan["precision"], plan["precision"])
        program = {"gradient_accumulation_steps": kwargs.get("gradient_accumulation_steps", 1)}
        original_init(self, *args, **kwargs)
        _run["accelerator"] = self
        memcap.arm()
        safely(observe, {**_program_settings(self), **{k: v for k, v in program.items() if k not in plan}},
               _facts(self))
        safely(common.stop_at_step_end_on, signal.SIGTERM, signal.SIGINT)

    @functools.wraps(original_prepare)
    def prepare(self, *objects, **kwargs):
        if self is not _run["accelerator"]:
            return original_prepare(self, *objects, **kwargs)
        objects = tuple(safely(_before_prepare, self, obj) or obj for obj in objects)
        previous, common.phase[0] = common.phase[0], "load"  # the model moves to the device here
        try:
            prepared = original_prepare(self, *objects, **kwargs)
        except BaseException as exc:
            safely(common.record_failure, exc, "load")
            raise
        finally:
            common.phase[0] = previous
        for given, obj in zip(objects, prepared if isinstance(prepared, tuple) else (prepared,)):
            if given is _run["loader"] and _run["prepared"] is None:
                safely(_watch_loader, obj)
        return prepared

    @functools.wraps(original_backward)
    def backward(self, loss, **kwargs):
        if self is _run["accelerator"] and not _run["accumulate_seen"] and self.gradient_accumulation_steps > 1:
            # No accumulate() around this loop: count micro-batches here, so the prepared optimizer steps once
            # per optimizer step of the plan.
            _run["micro"] += 1
            self.gradient_state._set_sync_gradients(_run["micro"] % self.gradient_accumulation_steps == 0)
        return original_backward(self, loss, **kwargs)

    @functools.wraps(original_accumulate)
    def accumulate(self, *models):
        _run["accumulate_seen"] = True
        return original_accumulate(self, *models)

    cls.__init__, cls.prepare, cls.backward, cls.accumulate = __init__, prepare, backward, accumulate
    common.on_fatal.append(_save_after_failure)


def patch_optimizer(module) -> None:
    cls = module.AcceleratedOptimizer
    original_step = cls.step

    @functools.wraps(original_step)
    def step(self, *args, **kwargs):
        if _run["accelerator"] is None:
            return original_step(self, *args, **kwargs)
        syncing = self.gradient_state.sync_gradients
        _run["in_step"] = syncing
        result = original_step(self, *args, **kwargs)
        _run["in_step"] = False
        if syncing and not getattr(self, "step_was_skipped", False):
            safely(_stepped)
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


def _before_prepare(accelerator, obj):
    """The training DataLoader with the plan's batch (same dataset, sampler and order); a model with the plan's
    gradient checkpointing."""
    from torch.utils.data import DataLoader
    plan = common.plan()
    if isinstance(obj, DataLoader) and _run["loader"] is None and obj.batch_size is not None:
        observe({"per_device_train_batch_size": obj.batch_size, "dataloader_num_workers": obj.num_workers,
                 **({"gradient_accumulation_steps": accelerator.gradient_accumulation_steps}
                    if "gradient_accumulation_steps" not in plan else {})})
        batch = plan.get("per_device_train_batch_size", obj.batch_size)
        workers = plan.get("dataloader_num_workers", obj.num_workers)
        if (batch, workers) != (obj.batch_size, obj.num_workers):
            obj = DataLoader(obj.dataset, batch_size=batch, sampler=obj.sampler, collate_fn=obj.collate_fn,
                             num_workers=workers, pin_memory=obj.pin_memory, drop_last=obj.drop_last,
                             timeout=obj.timeout, worker_init_fn=obj.worker_init_fn, generator=obj.generator,
                             **({"prefetch_factor": obj.prefetch_factor,
                                 "persistent_workers": obj.persistent_workers} if workers else {}))
        _run["loader"] = obj
        return obj
    if hasattr(obj, "gradient_checkpointing_enable") and hasattr(obj, "config"):
        common.observed["model"] = safely(probe.model_report, obj)
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
    _run["prepared"] = prepared
    cls = type(prepared)
    if getattr(cls, "_oomladder_iter", False):
        return
    original_iter = cls.__iter__

    def __iter__(self):
        if self is not _run["prepared"]:
            yield from original_iter(self)
            return
        safely(_begin)
        if _run["skip_epochs"]:
            _run["skip_epochs"] -= 1
            return  # an epoch an earlier attempt finished
        skip, _run["skip"] = _run["skip"], 0
        for batch in original_iter(self):
            if skip:
                skip -= 1  # trained on in an earlier attempt
                continue
            safely(probe.note_batch, batch)
            yield batch

    cls.__iter__ = __iter__
    cls._oomladder_iter = True


# --- progress, resume and the emergency checkpoint ----------------------------------------------------------

def _begin() -> None:
    """On the training DataLoader's first iteration: load the checkpoint the supervisor named, say where
    training begins, and count the micro-batches already trained on."""
    if _run["began"]:
        return
    _run["began"] = True
    accelerator = _run["accelerator"]
    resume = emergency.resume_point()
    if resume and accelerator is not None:
        accelerator.load_state(resume)
        _run["step"] = int((files.read_json(Path(resume) / files.CHECKPOINT_MARKER) or {}).get("step", 0))
        consumed = _run["step"] * accelerator.gradient_accumulation_steps  # micro-batches of this plan's size
        # accumulate() decides sync_gradients from the accelerator's own micro-batch count, which load_state
        # restored as the earlier plan counted it (and past the failed micro-batch): count as this plan does.
        accelerator.step = consumed
        per_epoch = len(_run["prepared"]) if hasattr(_run["prepared"], "__len__") else 0
        _run["skip_epochs"], _run["skip"] = divmod(consumed, per_epoch) if per_epoch else (0, consumed)
    common.current.update(step=_run["step"])
    files.append_progress({"began_at": _run["step"], "max_steps": None})


def _stepped() -> None:
    """After each optimizer step the prepared optimizer really took."""
    _run["step"] += 1
    _run["micro"] = 0
    common.current.update(step=_run["step"])
    emergency.snapshot_rng()
    peak, measure = memcap.peak()
    files.append_progress({"step": _run["step"], "max_steps": None, "phase": "train", "peak": peak,
                           "peak_measure": measure, "batch_shape": probe.batch_shapes()["largest"], "executed": True})
    if common.stop_requested[0]:
        signum = common.stop_requested[0]
        _save("stopped")
        print(f"oomladder: stopped by {signal.Signals(signum).name} after step {_run['step']}, which is saved",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)


def _save_after_failure(exc: BaseException) -> None:
    """From the excepthook: the last finished step, after an out-of-memory error outside the optimizer step."""
    if _run["accelerator"] is None or not common.is_memory_failure(exc):
        return
    if (why := emergency.nothing_to_keep(_run["step"], _run["in_step"])) is not None:
        emergency.skip(why)
        return
    emergency.free_failed_step(exc, *_run["accelerator"]._models)
    _save("oom")


def _save(why: str) -> None:
    accelerator = _run["accelerator"]
    if not accelerator.is_main_process:
        return
    import torch
    try:
        partial = emergency.begin(_run["step"], sum(emergency.state_bytes(m, o) for m, o in
                                                    zip(accelerator._models, accelerator._optimizers or [None])))
    except emergency.NoRoom as exc:
        emergency.skip(str(exc))
        return
    automatic = accelerator.project_configuration.automatic_checkpoint_naming
    accelerator.project_configuration.automatic_checkpoint_naming = False  # never the program's own folder
    try:
        accelerator.save_state(str(partial))
    finally:
        accelerator.project_configuration.automatic_checkpoint_naming = automatic
    rng = emergency.rng_snapshot()
    if rng:  # the RNG as the last step left it, not as the failed step advanced it
        states = torch.load(partial / f"random_states_{accelerator.process_index}.pkl", weights_only=False)
        states.update(random_state=rng["python"], torch_manual_seed=rng["cpu"],
                      **({"numpy_random_seed": rng["numpy"]} if "numpy" in rng else {}),
                      **({"torch_cuda_manual_seed": rng["cuda"] if isinstance(rng["cuda"], list) else [rng["cuda"]]}
                         if "cuda" in rng else {}))
        torch.save(states, partial / f"random_states_{accelerator.process_index}.pkl")
    emergency.commit(partial, _run["step"], None, "accelerate", why=why)


def _model_facts(model) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"base_frozen": bool(hasattr(model, "peft_config") and trainable < total),
            "trainable_fraction": round(trainable / total, 6) if total else None}


