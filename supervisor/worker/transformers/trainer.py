"""The Hugging Face Trainer (and what subclasses it: TRL's trainers): observe the program's own
`TrainingArguments`, apply the plan to them, record the failure, save the emergency checkpoint after an OOM and
resume from it. Each step's reports, stops and tracker events are progress.py's; in-place recovery of a
step, in_place.py's."""

from __future__ import annotations

import functools
import importlib.util
import os
import signal
from typing import Any

from oomladder.worker import common
from oomladder.worker.hooks import memcap
from oomladder.worker.protocol import files, probe
from oomladder.worker.recovery import emergency, optimizer_state, step_state
from oomladder.worker.transformers import in_place, progress, trackers
from oomladder.worker.common import is_memory_failure, observe, peer_died, safely, stop_at_step_end_on
from oomladder.worker.state import STATE, Phase

HOOKS = {
    "transformers.training_args": lambda module: patch_training_args(module),
    "transformers.trainer": lambda module: patch_trainer(module),
}


def patch_training_args(module) -> None:
    cls = module.TrainingArguments
    original = cls.__post_init__

    seen = False

    @functools.wraps(original)
    def __post_init__(self, *args, **kwargs):
        nonlocal seen
        # The first arguments a process builds are the program's own. Later ones are copies of them, already
        # under the plan (TRL's trainers and `dataclasses.replace` build them again): not the program's.
        if not seen:
            seen = True
            safely(observe, _program_training_settings(self), {"output_dir": str(self.output_dir or "")})
        safely(_apply_to_training_args, self, common.plan())
        return original(self, *args, **kwargs)

    cls.__post_init__ = __post_init__


def _program_training_settings(args) -> dict[str, Any]:
    return {
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "per_device_eval_batch_size": args.per_device_eval_batch_size,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "gradient_checkpointing": bool(getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing),
        "dataloader_num_workers": args.dataloader_num_workers,
        "optim": getattr(args.optim, "value", args.optim),
        "fused_cross_entropy": bool(getattr(args, "use_liger_kernel", False)),
        "activation_offloading": False,  # the Trainer has no such setting: only oomladder's plan turns it on
        "world_size": int(os.environ.get("WORLD_SIZE", "1") or 1),
    }


def _apply_to_training_args(args, p: dict[str, Any]) -> None:
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size",
                 "dataloader_num_workers", "optim"):
        if p.get(name) is not None:
            setattr(args, name, p[name])
    if p.get("precision") is not None:
        args.bf16, args.fp16 = p["precision"] == "bf16", p["precision"] == "fp16"
        if args.bf16 and not args.use_cpu and not _accelerator_present():
            # Transformers refuses bf16 on a machine without a GPU unless told the run is on the CPU
            # ("Your setup doesn't support bf16/gpu"); the run is on the CPU either way.
            args.use_cpu = True
    if p.get("gradient_checkpointing") is not None:
        # Under Transformers 5's name where it has one: setting the deprecated alias makes the Trainer warn.
        name = "activation_checkpointing" if hasattr(args, "activation_checkpointing") else "gradient_checkpointing"
        setattr(args, name, p["gradient_checkpointing"])
        if p["gradient_checkpointing"]:
            given = getattr(args, f"{name}_kwargs", None) or args.gradient_checkpointing_kwargs
            setattr(args, f"{name}_kwargs", {**(given if isinstance(given, dict) else {}), "use_reentrant": False})
    if p.get("fused_cross_entropy") and hasattr(args, "liger_kernel_config"):
        # Only the fused linear cross-entropy: the model's other layers keep their own code.
        args.use_liger_kernel = True
        args.liger_kernel_config = {"fused_linear_cross_entropy": True, "cross_entropy": False, "rope": False,
                                    "swiglu": False, "rms_norm": False}
    if p.get("dataloader_num_workers") == 0:
        args.dataloader_prefetch_factor = None  # only allowed with workers
        args.dataloader_persistent_workers = False
    # The supervisor, not the Trainer, chooses the batch: the Trainer's own search would undo the plan.
    args.auto_find_batch_size = False


def _accelerator_present() -> bool:
    import torch
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or bool(mps and mps.is_available())
            or bool(xpu and hasattr(xpu, "is_available") and xpu.is_available()))


def patch_trainer(module) -> None:  # noqa: C901 - its hooks are closures, counted with it (to split)
    cls = module.Trainer
    original_init, original_train, original_evaluate = cls.__init__, cls.train, cls.evaluate
    original_step = cls.training_step
    original_load_optimizer = getattr(cls, "_load_optimizer_and_scheduler", None)

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        memcap.arm()
        STATE.owner = STATE.owner or "transformers.Trainer"
        with common.loading():  # the model moves to the device here
            original_init(self, *args, **kwargs)
        safely(_add_first, self, progress.callback(module, self))
        report = safely(probe.model_report, self.model)
        if report is not None:  # whose loss the step runs: TRL's SFT keeps logits-size tensors of its own
            known = next((c for c in type(self).__mro__ if c.__module__.startswith(("trl.", "transformers."))),
                         type(self))
            report["trainer"] = f"{known.__module__}.{known.__qualname__}"
        STATE.observed["model"] = report
        safely(observe, None, _facts(self))

    @functools.wraps(original_train)
    def train(self, *args, **kwargs):
        resume = emergency.resume_point()
        if resume:  # continue where the OOM struck, whatever the script passes
            resume = safely(emergency.prepare_resume, resume, self) or resume
            if args:
                args = (resume, *args[1:])
            else:
                kwargs["resume_from_checkpoint"] = resume
        safely(stop_at_step_end_on, signal.SIGTERM, signal.SIGINT)
        try:
            return original_train(self, *args, **kwargs)
        except Exception as exc:
            safely(_record_failure, self, exc)
            # Rank 0 saves the last whole step also when a peer's OOM broke the collective it waited in:
            # the weights are the same on every rank, and only rank 0 writes them.
            if is_memory_failure(exc) or peer_died(exc):
                safely(emergency.save_after_oom, self, exc)
            raise

    @functools.wraps(original_evaluate)
    def evaluate(self, *args, **kwargs):
        with STATE.phase_is(Phase.EVAL):
            try:
                return original_evaluate(self, *args, **kwargs)
            except Exception as exc:
                safely(_record_failure, self, exc)
                raise

    @functools.wraps(original_step)
    def training_step(self, model, inputs, *args, **kwargs):
        safely(probe.note_batch, inputs)  # the estimator sizes activations by the batch that ran (or died)
        if not getattr(self, "_oomladder_rows_told", False):  # in training mode now: whether its rows are coupled
            self._oomladder_rows_told = True
            safely(observe, None, {"coupled_rows": step_state.coupled_rows(self.model)})
        # An OOM in the step is met here first: the same micro-batch in chunks, without a relaunch.
        before = (STATE.split, STATE.checkpointed)
        if common.plan().get("activation_offloading") and self.args.device.type == "cuda":
            import torch
            # What autograd saves for the backward pass waits in pinned host memory, and comes back for it.
            with torch.autograd.graph.save_on_cpu(pin_memory=True):
                loss = in_place.training_step(self, original_step, model, inputs, args, kwargs)
        else:
            loss = in_place.training_step(self, original_step, model, inputs, args, kwargs)
        if (STATE.split, STATE.checkpointed) != before:  # recovered in place: the trackers hear of it
            trackers.recovered_in_place(self)
        return loss

    def _load_optimizer_and_scheduler(self, checkpoint, *args, **kwargs):
        """Resuming after a rung changed the optimizer (8-bit AdamW): Adam's moments are converted, not lost."""
        inner = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper loads into its inner one
        own = getattr(inner, "load_state_dict", None)
        if checkpoint is None or own is None:
            return original_load_optimizer(self, checkpoint, *args, **kwargs)
        try:
            inner.load_state_dict = lambda state_dict, *a, **k: optimizer_state.load(inner, state_dict, own)
        except Exception:  # an optimizer that takes no attribute: its own loading, as without oomladder
            return original_load_optimizer(self, checkpoint, *args, **kwargs)
        try:
            return original_load_optimizer(self, checkpoint, *args, **kwargs)
        finally:
            del inner.load_state_dict

    cls.__init__, cls.train, cls.evaluate, cls.training_step = __init__, train, evaluate, training_step
    if original_load_optimizer is not None:
        cls._load_optimizer_and_scheduler = functools.wraps(original_load_optimizer)(_load_optimizer_and_scheduler)


def _add_first(trainer, callback) -> None:
    """Right after the Trainer's own flow callback, before the program's: a step is reported executed
    even when one of the program's callbacks then fails at the step's end."""
    callbacks = trainer.callback_handler.callbacks
    callbacks.insert(1 if callbacks and type(callbacks[0]).__name__ == "DefaultFlowCallback" else 0, callback)


def _facts(trainer) -> dict[str, Any]:
    import torch
    model = trainer.model
    total = trainable = 0
    base_frozen = hasattr(model, "peft_config")
    for name, param in model.named_parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            if not any(tag in name for tag in ("lora_", "modules_to_save", "adapter", "prompt", "ia3_")):
                base_frozen = False
    device = trainer.args.device.type
    bf16 = torch.cuda.is_bf16_supported() if device == "cuda" else device in ("cpu", "xpu", "mps")
    memory = torch.cuda.get_device_properties(trainer.args.device).total_memory if device == "cuda" else None
    return {"device": device, "bf16_supported": bool(bf16), "base_frozen": bool(base_frozen and trainable),
            "trainable_fraction": round(trainable / total, 6) if total else None, "device_memory": memory,
            "liger": importlib.util.find_spec("liger_kernel") is not None}


def _record_failure(trainer, exc: BaseException) -> None:
    state = trainer.state
    peak, measure = memcap.peak()
    files.write_failure(exc, step=state.global_step, max_steps=state.max_steps, phase=STATE.phase,
                        peak=peak, peak_measure=measure, batch_shape=probe.batch_shapes()["current"])
