"""The Hugging Face Trainer (and what subclasses it: TRL's trainers): observe the program's own
`TrainingArguments`, apply the plan to them, report each optimizer step, record the failure,
save the emergency checkpoint after an OOM, resume from it, stop at a step boundary on SIGTERM, and
tell the program's own experiment tracker (`report_to`) which attempt this is and why."""

from __future__ import annotations

import functools
import importlib.util
import os
import signal
import sys
from typing import Any

from oomladder.worker import common, emergency, files, memcap, optimizer_state, probe, trainer_inplace
from oomladder.worker.common import is_memory_failure, observe, peer_died, safely, stop_at_step_end_on

HOOKS = {
    "transformers.training_args": lambda module: patch_training_args(module),
    "transformers.trainer": lambda module: patch_trainer(module),
}


def patch_training_args(module) -> None:
    cls = module.TrainingArguments
    original = cls.__post_init__

    seen = [False]

    @functools.wraps(original)
    def __post_init__(self, *args, **kwargs):
        # The first arguments a process builds are the program's own. Later ones are copies of them, already
        # under the plan (TRL's trainers and `dataclasses.replace` build them again): not the program's.
        if not seen[0]:
            seen[0] = True
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


def patch_trainer(module) -> None:
    cls = module.Trainer
    original_init, original_train, original_evaluate = cls.__init__, cls.train, cls.evaluate
    original_step = cls.training_step
    original_load_optimizer = getattr(cls, "_load_optimizer_and_scheduler", None)

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        memcap.arm()
        common.owner[0] = common.owner[0] or "transformers.Trainer"
        previous, common.phase[0] = common.phase[0], "load"  # the model moves to the device here
        try:
            original_init(self, *args, **kwargs)
        except BaseException as exc:
            safely(common.record_failure, exc, "load")
            raise
        finally:
            common.phase[0] = previous
        safely(_add_first, self, _progress_callback(module, self))
        report = safely(probe.model_report, self.model)
        if report is not None:  # whose loss the step runs: TRL's SFT keeps logits-size tensors of its own
            known = next((c for c in type(self).__mro__ if c.__module__.startswith(("trl.", "transformers."))), type(self))
            report["trainer"] = f"{known.__module__}.{known.__qualname__}"
        common.observed["model"] = report
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
        previous, common.phase[0] = common.phase[0], "eval"
        try:
            return original_evaluate(self, *args, **kwargs)
        except Exception as exc:
            safely(_record_failure, self, exc)
            raise
        finally:
            common.phase[0] = previous

    @functools.wraps(original_step)
    def training_step(self, model, inputs, *args, **kwargs):
        safely(probe.note_batch, inputs)  # the estimator sizes activations by the batch that ran (or died)
        # An OOM in the step is met here first: the same micro-batch in chunks, without a relaunch.
        if common.plan().get("activation_offloading") and self.args.device.type == "cuda":
            import torch
            # What autograd saves for the backward pass waits in pinned host memory, and comes back for it.
            with torch.autograd.graph.save_on_cpu(pin_memory=True):
                return trainer_inplace.training_step(self, original_step, model, inputs, args, kwargs)
        return trainer_inplace.training_step(self, original_step, model, inputs, args, kwargs)

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
    files.write_failure(exc, step=state.global_step, max_steps=state.max_steps, phase=common.phase[0],
                        peak=peak, peak_measure=measure, batch_shape=probe.batch_shapes()["current"])


def _tell_trackers(trainer, args, state, control) -> None:
    """oomladder's events in the program's own run of TensorBoard, W&B, MLflow...: the attempt number and the
    plan's batch and accumulation as scalars at the step this attempt begins from (where they changed), and the
    rung with its reason as text. Through the Trainer's own on_log, so every tracker it set up gets them, as
    each gets the loss (MLflow keeps numbers only, and drops the text with a warning of its own)."""
    events = common.tracker_events(state.global_step, args.per_device_train_batch_size,
                                   args.gradient_accumulation_steps)
    if args.report_to and events is not None:
        trainer.callback_handler.on_log(args, state, control, events)


def _progress_callback(module, trainer):
    class OomLadderProgress(module.TrainerCallback):
        """Reports each finished optimizer step (and evaluation) to the supervisor."""

        def __init__(self) -> None:
            self.loss = self.learning_rate = None
            self.trackers_told = True  # until training begins

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # logged after on_step_end: report the step again with its loss
                self.loss, self.learning_rate = logs["loss"], logs.get("learning_rate")
                self._report(state, "train")

        def on_train_begin(self, args, state, control, **kwargs):
            # Where this process really starts: the step after it is the first it will execute. The
            # supervisor compares it with the checkpoint it asked for, so a resume that did not happen shows.
            safely(files.append_progress, {"began_at": state.global_step, "max_steps": state.max_steps})
            # The trackers are told at the first step's beginning: this callback runs before theirs, and a
            # tracker's on_train_begin sets it up (TensorBoard's would otherwise open a folder of its own).
            self.trackers_told = False
            # The last attempt died evaluating at this very step: the evaluation is still owed.
            if os.environ.get("OOMLADDER_RESUME_EVAL_AT") == str(state.global_step) and state.global_step:
                trainer.evaluate()

        def on_step_end(self, args, state, control, **kwargs):
            safely(emergency.snapshot_rng)
            self._report(state, "train", executed=True)
            if common.stop_requested[0]:
                control.should_training_stop = True  # the last step ends: no next one begins

        def on_step_begin(self, args, state, control, **kwargs):
            # A stop asked for during a step is carried out here, after the program's own callbacks have seen
            # that step's end (its own records included): the step is saved, then the process exits.
            self._stop_if_asked(state)
            if not self.trackers_told:
                self.trackers_told = True
                safely(_tell_trackers, trainer, args, state, control)

        def on_train_end(self, args, state, control, **kwargs):
            self._stop_if_asked(state)

        def _stop_if_asked(self, state):
            if common.stop_requested[0]:
                signum = common.stop_requested[0]
                safely(emergency.save, trainer)
                print(f"oomladder: stopped by {signal.Signals(signum).name} after step {state.global_step}, "
                      f"which is saved", file=sys.stderr, flush=True)
                raise SystemExit(128 + signum)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            emergency.optimizer_step(True)

        def on_optimizer_step(self, args, state, control, **kwargs):
            emergency.optimizer_step(False)

        def on_evaluate(self, args, state, control, **kwargs):
            self._report(state, "eval")

        def _report(self, state, phase, executed=False):
            """`executed`: this process has just run optimizer step `state.global_step` (each one once);
            the other reports repeat a step's numbers with its loss or evaluation."""
            peak, measure = memcap.peak()
            safely(files.append_progress, {"step": state.global_step, "max_steps": state.max_steps,
                                            "loss": self.loss, "learning_rate": self.learning_rate,
                                            "phase": phase, "peak": peak, "peak_measure": measure,
                                            "batch_shape": probe.batch_shapes()["largest"],
                                            **({"executed": True} if executed else {})})

    return OomLadderProgress()
