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
already trained, without computing them (fast_forward.py), so that its step counter, epoch and schedule read as in
a continuous run, then loads the checkpoint before the next step's data is used. The training DataLoader is the
first one passed to `prepare`.
"""

from __future__ import annotations

import atexit
import functools
import signal
import sys
from pathlib import Path
from typing import Any

from oomladder.worker import common, emergency, fast_forward, files, memcap, probe, step_state
from oomladder.worker.common import observe, safely

HOOKS = {"accelerate.accelerator": lambda module: patch_accelerator(module),
         "accelerate.optimizer": lambda module: patch_optimizer(module)}
_PRECISIONS = {"no": "fp32", "bf16": "bf16", "fp16": "fp16", "fp8": "fp8"}

_run: dict[str, Any] = {"accelerator": None, "step": 0, "micro": 0, "began": False, "loader": None,
                        "prepared": None, "in_step": False, "accumulate_seen": False,
                        "replay": None,      # the FastForward under way, until the checkpoint is loaded
                        "load_due": False,   # the replay reached the checkpoint's step: load it before going on
                        "resume": None, "executed": 0,  # the checkpoint resumed from; steps this process computed
                        "losses": [], "loss_sum": None, "loss_count": 0}  # each step's mean loss, for a replay


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
        if self is not _run["accelerator"]:
            return original_backward(self, loss, **kwargs)
        if not _run["accumulate_seen"] and self.gradient_accumulation_steps > 1:
            # No accumulate() around this loop: count micro-batches here, so the prepared optimizer steps once
            # per optimizer step of the plan.
            _run["micro"] += 1
            self.gradient_state._set_sync_gradients(_run["micro"] % self.gradient_accumulation_steps == 0)
        if _run["replay"] is not None:
            return None  # fast-forwarding: nothing was computed, nothing to differentiate
        safely(_note_loss, loss)
        return original_backward(self, loss, **kwargs)

    @functools.wraps(original_accumulate)
    def accumulate(self, *models):
        _run["accumulate_seen"] = True
        return original_accumulate(self, *models)

    cls.__init__, cls.prepare, cls.backward, cls.accumulate = __init__, prepare, backward, accumulate
    for name in ("save_state", "save_model", "save", "log"):
        setattr(cls, name, _held_while_replaying(getattr(cls, name)))
    for name in ("unwrap_model", "end_training"):
        setattr(cls, name, _load_first(getattr(cls, name)))
    common.on_fatal.append(_save_after_failure)


def _held_while_replaying(original):
    """Saving and logging while fast-forwarding: nothing (the weights are not the trained ones yet, and the steps
    were logged when they ran); once the checkpoint is due, it is loaded first."""
    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        if self is _run["accelerator"]:
            _load_if_due()
            if _run["replay"] is not None:
                return None
        return original(self, *args, **kwargs)
    return wrapper


def _load_first(original):
    """What a loop calls after its last step (unwrap_model before save_pretrained, end_training): the checkpoint
    first, if the replay has reached it."""
    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        if self is _run["accelerator"]:
            _load_if_due()
        return original(self, *args, **kwargs)
    return wrapper


def patch_optimizer(module) -> None:
    cls = module.AcceleratedOptimizer
    original_step = cls.step

    @functools.wraps(original_step)
    def step(self, *args, **kwargs):
        if _run["accelerator"] is None:
            return original_step(self, *args, **kwargs)
        syncing = self.gradient_state.sync_gradients
        if _run["replay"] is not None:  # fast-forwarding: the step was taken by an earlier attempt
            if syncing:
                self.optimizer._opt_called = True  # as a step would: the program's scheduler steps after it
                _replayed()
            return None
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
        observe({"gradient_checkpointing": bool(getattr(obj, "is_gradient_checkpointing", False))},
                _model_facts(obj))
        if plan.get("gradient_checkpointing"):
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
        for batch in original_iter(self):
            _load_if_due()  # the replay has reached the checkpoint: this batch is the first one to train on
            if _run["replay"] is None:
                safely(probe.note_batch, batch)
            yield batch
        _load_if_due()

    cls.__iter__ = __iter__
    cls._oomladder_iter = True


# --- progress, resume and the emergency checkpoint ----------------------------------------------------------

def _begin() -> None:
    """On the training DataLoader's first iteration: with a checkpoint to resume from, fast-forward the program
    through the steps it holds; otherwise say that training begins at step 0."""
    if _run["began"]:
        return
    _run["began"] = True
    accelerator = _run["accelerator"]
    resume = emergency.resume_point()
    marker = (files.read_json(Path(resume) / files.CHECKPOINT_MARKER) or {}) if resume else {}
    step = int(marker.get("step", 0) or 0)
    if resume and accelerator is not None and step > 0:
        _run["resume"], _run["losses"] = resume, [float(x) for x in marker.get("losses") or []]
        _run["replay"] = fast_forward.FastForward(list(accelerator._models), step, _run["losses"])
        _run["replay"].start()
        atexit.register(_replay_unfinished)
        return  # where training begins is said when the checkpoint is loaded
    common.current.update(step=_run["step"])
    files.append_progress({"began_at": _run["step"], "max_steps": None})


def _replayed() -> None:
    """An optimizer step of the fast-forward: counted, not taken. A stop asked for now keeps the checkpoint."""
    replay = _run["replay"]
    replay.step += 1
    _run["step"] = replay.step
    common.current.update(step=_run["step"])
    if common.stop_requested[0]:
        signum = common.stop_requested[0]
        replay.stop()
        print(f"oomladder: stopped by {signal.Signals(signum).name} while fast-forwarding; the checkpoint of step "
              f"{replay.target} stays the latest", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)
    if replay.step >= replay.target:
        _run["load_due"] = True


def _replay_unfinished() -> None:
    """At exit: a program whose loop ended before the fast-forward reached the checkpoint did not resume (its loop
    is not the one that trained the checkpoint, or stops earlier): said, never counted as steps run once."""
    replay = _run["replay"]
    if replay is None:
        return
    replay.stop()
    why = (f"the program's loop ended after {replay.step} of the {replay.target} steps it was fast-forwarded through, "
           f"so the checkpoint was never loaded: it must run the same loop over the same data to resume")
    safely(files.append_progress, {"resume_failed": why})
    print(f"oomladder: did not resume: {why}", file=sys.stderr, flush=True)


def _load_if_due() -> None:
    """The replay reached the checkpoint's step: load the checkpoint (weights, optimizer, scheduler, RNG) and train
    on from there."""
    if not _run["load_due"]:
        return
    _run["load_due"] = False
    replay, _run["replay"] = _run["replay"], None
    replay.stop()
    accelerator = _run["accelerator"]
    accelerator.load_state(_run["resume"])
    # accumulate() decides sync_gradients from the accelerator's own micro-batch count, which load_state
    # restored as the earlier plan counted it (and past the failed micro-batch): count as this plan does.
    accelerator.step = _run["step"] * accelerator.gradient_accumulation_steps
    _run["micro"] = 0
    emergency.snapshot_rng()
    emergency.keep_step_end(tuple(accelerator._models))
    common.current.update(step=_run["step"])
    files.append_progress({"began_at": _run["step"], "max_steps": None})
    print(f"oomladder: fast-forwarded through steps 1-{replay.target}; the checkpoint of step {replay.target} is "
          f"loaded, and training goes on at step {replay.target + 1}", file=sys.stderr, flush=True)


def _note_loss(loss) -> None:
    """Each micro-batch's loss, summed on its device (read once per optimizer step)."""
    value = loss.detach().float()
    _run["loss_sum"] = value if _run["loss_sum"] is None else _run["loss_sum"] + value
    _run["loss_count"] += 1


def _stepped() -> None:
    """After each optimizer step the prepared optimizer really took."""
    if not _run.get("rows_told"):  # this process's first step: the models are in training mode now
        _run["rows_told"] = True
        observe(None, {"coupled_rows": next(filter(None, map(step_state.coupled_rows, _run["accelerator"]._models)),
                                            None)})
    _run["step"] += 1
    _run["executed"] += 1
    _run["micro"] = 0
    loss = float(_run["loss_sum"]) / _run["loss_count"] if _run["loss_count"] else None
    _run["loss_sum"], _run["loss_count"] = None, 0
    before = _run["losses"][:_run["step"] - 1]
    _run["losses"] = before + [None] * (_run["step"] - 1 - len(before)) + [loss]
    common.current.update(step=_run["step"])
    emergency.snapshot_rng()
    emergency.keep_step_end(tuple(_run["accelerator"]._models))
    peak, measure = memcap.peak()
    files.append_progress({"step": _run["step"], "max_steps": None, "phase": "train", "peak": peak, "loss": loss,
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
    if _run["replay"] is not None or (_run["resume"] and not _run["executed"]):
        emergency.skip(emergency.no_step_ended())
        return
    if (why := emergency.nothing_to_keep(_run["step"], _run["in_step"])) is not None:
        emergency.skip(why)
        return
    emergency.free_failed_step(exc, *_run["accelerator"]._models)
    if (why := emergency.back_to_step_end()) is not None:
        emergency.skip(why)
        return
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
    emergency.commit(partial, _run["step"], None, "accelerate", why=why,
                     losses=[x if x is not None else 0.0 for x in _run["losses"][:_run["step"]]])


def _model_facts(model) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"base_frozen": bool(hasattr(model, "peft_config") and trainable < total),
            "trainable_fraction": round(trainable / total, 6) if total else None}


