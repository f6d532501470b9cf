"""The Hugging Face Trainer (and what subclasses it: TRL's trainers): observe the program's own
`TrainingArguments` and apply the plan to them (arguments.py, field by field), record the failure, save the
emergency checkpoint after an OOM and resume from it. Each step's reports, stops and tracker events are
progress.py's; in-place recovery of a step, in_place.py's."""

from __future__ import annotations

import functools
import importlib.util
import signal
from typing import Any

from oomladder.worker import common
from oomladder.worker.common import is_memory_failure, observe, peer_died, safely, stop_at_step_end_on
from oomladder.worker.hooks import memcap
from oomladder.worker.protocol import files, probe
from oomladder.worker.recovery import emergency, optimizer_state, step_state
from oomladder.worker.state import STATE, Phase
from oomladder.worker.transformers import arguments, in_place, progress, trackers

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
            safely(observe, arguments.observed(self), {"output_dir": str(self.output_dir or "")})
        safely(arguments.apply, self, common.plan())
        return original(self, *args, **kwargs)

    cls.__post_init__ = __post_init__


def patch_trainer(module) -> None:
    cls = module.Trainer
    cls.__init__ = _init(module, cls.__init__)
    cls.train, cls.evaluate, cls.training_step = _train(cls.train), _evaluate(cls.evaluate), _step(cls.training_step)
    original_load_optimizer = getattr(cls, "_load_optimizer_and_scheduler", None)
    if original_load_optimizer is not None:
        cls._load_optimizer_and_scheduler = _load_optimizer_and_scheduler(original_load_optimizer)


def _init(module, original):
    """The Trainer's __init__: the model moves to the device (the load phase), then the progress callback goes in
    first and the model's shape and facts are observed."""
    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        memcap.arm()
        STATE.owner = STATE.owner or "transformers.Trainer"
        with common.loading():  # the model moves to the device here
            original(self, *args, **kwargs)
        safely(_add_first, self, progress.callback(module, self))
        report = safely(probe.model_report, self.model)
        if report is not None:  # whose loss the step runs: TRL's SFT keeps logits-size tensors of its own
            known = next((c for c in type(self).__mro__ if c.__module__.startswith(("trl.", "transformers."))),
                         type(self))
            report["trainer"] = f"{known.__module__}.{known.__qualname__}"
        STATE.observed["model"] = report
        safely(observe, None, _facts(self))
    return __init__


def _train(original):
    """`train`: resumed from the supervisor's checkpoint whatever the script passes; its failure recorded, and the
    last finished step saved after an OOM."""
    @functools.wraps(original)
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
            return original(self, *args, **kwargs)
        except Exception as exc:
            safely(_record_failure, self, exc)
            # Rank 0 saves the last whole step also when a peer's OOM broke the collective it waited in:
            # the weights are the same on every rank, and only rank 0 writes them.
            if is_memory_failure(exc) or peer_died(exc):
                safely(emergency.save_after_oom, self, exc)
            raise
    return train


def _evaluate(original):
    @functools.wraps(original)
    def evaluate(self, *args, **kwargs):
        with STATE.phase_is(Phase.EVAL):
            try:
                return original(self, *args, **kwargs)
            except Exception as exc:
                safely(_record_failure, self, exc)
                raise
    return evaluate


def _step(original):
    """`training_step`: the batch's shape noted, and an OOM met in place first (in_place.py)."""
    @functools.wraps(original)
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
                loss = in_place.training_step(self, original, model, inputs, args, kwargs)
        else:
            loss = in_place.training_step(self, original, model, inputs, args, kwargs)
        if (STATE.split, STATE.checkpointed) != before:  # recovered in place: the trackers hear of it
            trackers.recovered_in_place(self)
        return loss
    return training_step


def _load_optimizer_and_scheduler(original):
    @functools.wraps(original)
    def _load_optimizer_and_scheduler(self, checkpoint, *args, **kwargs):
        """Resuming after a rung changed the optimizer (8-bit AdamW): Adam's moments are converted, not lost."""
        inner = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper loads into its inner one
        own = getattr(inner, "load_state_dict", None)
        if checkpoint is None or own is None:
            return original(self, checkpoint, *args, **kwargs)
        try:
            inner.load_state_dict = lambda state_dict, *a, **k: optimizer_state.load(inner, state_dict, own)
        except Exception:  # an optimizer that takes no attribute: its own loading, as without oomladder
            return original(self, checkpoint, *args, **kwargs)
        try:
            return original(self, checkpoint, *args, **kwargs)
        finally:
            del inner.load_state_dict
    return _load_optimizer_and_scheduler


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
