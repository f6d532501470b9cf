"""The adapter: applies the plan to an unmodified Hugging Face program and reports back.

Installed from sitecustomize before the program runs. It patches, when (and only if) the program
imports them: `TrainingArguments.__post_init__` (observe the program's settings, then apply the
plan), `PreTrainedModel.from_pretrained` (dtype and quantization), `Trainer` (progress callback,
facts, failure record, emergency checkpoint, resume, SIGTERM at a step boundary),
`torch.optim.Optimizer` (the memory cap for programs without a model from transformers) and
DataLoader workers (host memory, not under the cap). Patching happens in a post-import hook, so a
program that never imports transformers pays nothing for it.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import signal
import sys
import threading
from typing import Any
from collections.abc import Callable

from supervisor.worker import emergency, files, memcap, probe
from supervisor.worker.importhook import PostImportFinder

_observed: dict[str, Any] = {"plan": {}, "facts": {}}
_phase = ["train"]
_stop_requested: list[int] = [0]
_launcher = [False]  # this process starts ranks (torchrun, accelerate launch): it is not one of them


def plan() -> dict[str, Any]:
    return json.loads(os.environ.get("OOMLADDER_PLAN") or "{}")


def install() -> None:
    hooks = {
        "transformers.training_args": _patch_training_args,
        "transformers.modeling_utils": _patch_modeling_utils,
        "transformers.trainer": _patch_trainer,
        "torch.optim.optimizer": _patch_optimizer,
        "torch.utils.data._utils.worker": _patch_dataloader_worker,
        "torch.distributed.launcher.api": _mark_launcher,
    }
    for name, hook in list(hooks.items()):
        if name in sys.modules:
            hook(sys.modules[name])
            del hooks[name]
    sys.meta_path.insert(0, PostImportFinder(hooks, _safely))
    _chain_excepthook()
    atexit.register(_report_exit)


def _safely(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # the adapter failing must not take the program down with it
        print(f"oomladder: adapter step {getattr(fn, '__name__', fn)} failed: {exc!r}", file=sys.stderr)
        return None


# --- observation -------------------------------------------------------------------------------

def _observe(plan_fields: dict[str, Any] | None = None, facts: dict[str, Any] | None = None) -> None:
    _observed["plan"].update({k: v for k, v in (plan_fields or {}).items() if v is not None})
    _observed["facts"].update({k: v for k, v in (facts or {}).items() if v is not None})
    files.write_json(files.path(files.OBSERVED), {**_observed, "memory_cap": memcap.info(), "pid": os.getpid()})


# --- TrainingArguments ---------------------------------------------------------------------------

def _patch_training_args(module) -> None:
    cls = module.TrainingArguments
    original = cls.__post_init__

    @functools.wraps(original)
    def __post_init__(self, *args, **kwargs):
        _safely(_observe, _program_training_settings(self), {"output_dir": str(self.output_dir or "")})
        _safely(_apply_to_training_args, self, plan())
        return original(self, *args, **kwargs)

    cls.__post_init__ = __post_init__


def _program_training_settings(args) -> dict[str, Any]:
    return {
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "per_device_eval_batch_size": args.per_device_eval_batch_size,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "dataloader_num_workers": args.dataloader_num_workers,
        "optim": getattr(args.optim, "value", args.optim),
        "world_size": int(os.environ.get("WORLD_SIZE", "1") or 1),
    }


def _apply_to_training_args(args, p: dict[str, Any]) -> None:
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size",
                 "dataloader_num_workers", "optim"):
        if p.get(name) is not None:
            setattr(args, name, p[name])
    if p.get("precision") is not None:
        args.bf16, args.fp16 = p["precision"] == "bf16", p["precision"] == "fp16"
    if p.get("gradient_checkpointing") is not None:
        args.gradient_checkpointing = p["gradient_checkpointing"]
        if p["gradient_checkpointing"]:
            kwargs = dict(args.gradient_checkpointing_kwargs or {}) if isinstance(
                args.gradient_checkpointing_kwargs, dict) else {}
            kwargs["use_reentrant"] = False
            args.gradient_checkpointing_kwargs = kwargs
    if p.get("dataloader_num_workers") == 0:
        args.dataloader_prefetch_factor = None  # only allowed with workers
        args.dataloader_persistent_workers = False
    # The supervisor, not the Trainer, chooses the batch: the Trainer's own search would undo the plan.
    args.auto_find_batch_size = False


# --- from_pretrained -----------------------------------------------------------------------------

def _patch_modeling_utils(module) -> None:
    cls = module.PreTrainedModel
    original = cls.from_pretrained.__func__
    depth = [0]

    @functools.wraps(original)
    def from_pretrained(klass, *args, **kwargs):
        memcap.arm()
        if depth[0]:  # an Auto class calling the concrete class: apply the plan once
            return original(klass, *args, **kwargs)
        depth[0] += 1
        try:
            requested = _safely(_requested_load, kwargs) or {}
            changed = _safely(_apply_to_load, kwargs, plan()) or False
            model = original(klass, *args, **kwargs)
            if not changed and "load_dtype" not in requested:
                requested["load_dtype"] = str(getattr(model, "dtype", "")).replace("torch.", "") or None
            _safely(_observe, requested)
            return model
        finally:
            depth[0] -= 1

    cls.from_pretrained = classmethod(from_pretrained)
    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        memcap.arm()  # a model built from its config, without from_pretrained
        return original_init(self, *args, **kwargs)

    cls.__init__ = __init__


def _requested_load(kwargs: dict[str, Any]) -> dict[str, Any]:
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    out: dict[str, Any] = {"quantization": _quantization_of(kwargs)}
    if dtype is not None and dtype != "auto":
        out["load_dtype"] = str(dtype).replace("torch.", "")
    return out


def _quantization_of(kwargs: dict[str, Any]) -> str:
    config = kwargs.get("quantization_config")
    if kwargs.get("load_in_4bit") or getattr(config, "load_in_4bit", False):
        return "nf4"
    if kwargs.get("load_in_8bit") or getattr(config, "load_in_8bit", False):
        return "int8"
    return "none" if config is None else type(config).__name__


def _apply_to_load(kwargs: dict[str, Any], p: dict[str, Any]) -> bool:
    import torch
    changed = False
    if p.get("load_dtype") not in (None, "auto"):
        kwargs.pop("torch_dtype", None)
        kwargs["dtype"] = getattr(torch, p["load_dtype"])
        changed = True
    quantization = p.get("quantization")
    if quantization in ("int8", "nf4") and _quantization_of(kwargs) != quantization:
        from transformers import BitsAndBytesConfig
        kwargs.pop("load_in_8bit", None)
        kwargs.pop("load_in_4bit", None)
        if quantization == "int8":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            compute = torch.bfloat16 if p.get("precision") == "bf16" else torch.float32
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                bnb_4bit_use_double_quant=True)
        changed = True
    return changed


# --- Trainer ----------------------------------------------------------------------------------

def _patch_trainer(module) -> None:
    cls = module.Trainer
    original_init, original_train, original_evaluate = cls.__init__, cls.train, cls.evaluate
    original_step = cls.training_step

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        memcap.arm()
        original_init(self, *args, **kwargs)
        _safely(lambda: self.add_callback(_progress_callback(module, self)))
        _observed["model"] = _safely(probe.model_report, self.model)
        _safely(_observe, None, _facts(self))

    @functools.wraps(original_train)
    def train(self, *args, **kwargs):
        resume = emergency.resume_point()
        if resume:  # continue where the OOM struck, whatever the script passes
            _safely(emergency.prepare_resume, resume, self)
            if args:
                args = (resume, *args[1:])
            else:
                kwargs["resume_from_checkpoint"] = resume
        _safely(_stop_at_step_end_on, signal.SIGTERM, signal.SIGINT)
        try:
            return original_train(self, *args, **kwargs)
        except Exception as exc:
            _safely(_record_failure, self, exc)
            # Rank 0 saves the last whole step also when a peer's OOM broke the collective it waited in:
            # the weights are the same on every rank, and only rank 0 writes them.
            if _is_device_oom(exc) or _peer_died(exc):
                _safely(emergency.save_after_oom, self, exc)
            raise

    @functools.wraps(original_evaluate)
    def evaluate(self, *args, **kwargs):
        previous, _phase[0] = _phase[0], "eval"
        try:
            return original_evaluate(self, *args, **kwargs)
        except Exception as exc:
            _safely(_record_failure, self, exc)
            raise
        finally:
            _phase[0] = previous

    @functools.wraps(original_step)
    def training_step(self, model, inputs, *args, **kwargs):
        _safely(probe.note_batch, inputs)  # the estimator sizes activations by the batch that ran (or died)
        return original_step(self, model, inputs, *args, **kwargs)

    cls.__init__, cls.train, cls.evaluate, cls.training_step = __init__, train, evaluate, training_step


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
            "trainable_fraction": round(trainable / total, 6) if total else None, "device_memory": memory}


def _is_device_oom(exc: BaseException) -> bool:
    from supervisor.classify import Evidence, classify
    capped = memcap.info().get("mode") == "cpu_address_space"
    record = {"exc_type": type(exc).__name__, "message": str(exc)}
    return classify(Evidence(returncode=1, record=record, capped=capped)).memory == "device"


def _peer_died(exc: BaseException) -> bool:
    from supervisor.classify import peer_died
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and peer_died(str(exc))


def _record_failure(trainer, exc: BaseException) -> None:
    state = trainer.state
    peak, measure = memcap.peak()
    files.write_failure(exc, step=state.global_step, max_steps=state.max_steps, phase=_phase[0],
                        peak=peak, peak_measure=measure, batch_shape=probe.batch_shapes()["current"])


def _stop_at_step_end_on(*signals: int) -> None:
    """SIGTERM (a scheduler, the supervisor) finishes the step in flight, saves it, and exits 128+signal:
    a pre-empted run loses no step. A second signal acts at once."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in signals:
        previous = signal.getsignal(signum)

        def handler(sig, frame, previous=previous):
            _stop_requested[0] = sig
            signal.signal(sig, previous if callable(previous) else signal.SIG_DFL)

        signal.signal(signum, handler)


def _progress_callback(module, trainer):
    class OomLadderProgress(module.TrainerCallback):
        """Reports each finished optimizer step (and evaluation) to the supervisor."""

        def __init__(self) -> None:
            self.loss = self.learning_rate = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # logged after on_step_end: report the step again with its loss
                self.loss, self.learning_rate = logs["loss"], logs.get("learning_rate")
                self._report(state, "train")

        def on_train_begin(self, args, state, control, **kwargs):
            # The last attempt died evaluating at this very step: the evaluation is still owed.
            if os.environ.get("OOMLADDER_RESUME_EVAL_AT") == str(state.global_step) and state.global_step:
                trainer.evaluate()

        def on_step_end(self, args, state, control, **kwargs):
            _safely(emergency.snapshot_rng)
            self._report(state, "train")
            if _stop_requested[0]:
                signum = _stop_requested[0]
                _safely(emergency.save, trainer)
                print(f"oomladder: stopped by {signal.Signals(signum).name} after step {state.global_step}, "
                      f"which is saved", file=sys.stderr, flush=True)
                raise SystemExit(128 + signum)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            emergency.optimizer_step(True)

        def on_optimizer_step(self, args, state, control, **kwargs):
            emergency.optimizer_step(False)

        def on_evaluate(self, args, state, control, **kwargs):
            self._report(state, "eval")

        def _report(self, state, phase):
            peak, measure = memcap.peak()
            _safely(files.append_progress, {"step": state.global_step, "max_steps": state.max_steps,
                                            "loss": self.loss, "learning_rate": self.learning_rate,
                                            "phase": phase, "peak": peak, "peak_measure": measure,
                                            "batch_shape": probe.batch_shapes()["largest"]})

    return OomLadderProgress()


# --- programs without transformers ----------------------------------------------------------------

def _patch_optimizer(module) -> None:
    cls = module.Optimizer
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        memcap.arm()  # the last moment before training allocates: weights exist, the rest counts
        return original(self, *args, **kwargs)

    cls.__init__ = __init__


def _patch_dataloader_worker(module) -> None:
    original = module._worker_loop

    @functools.wraps(original)
    def _worker_loop(*args, **kwargs):
        _safely(memcap.lift_in_child)
        return original(*args, **kwargs)

    module._worker_loop = _worker_loop


def _mark_launcher(module) -> None:
    """torchrun, accelerate launch and notebook_launcher all start ranks through torch's elastic launcher.
    The launcher's own process has no RANK: left alone, it would report its peak and its ChildFailedError
    as rank 0's."""
    if "RANK" not in os.environ:
        _launcher[0] = True


def _report_exit() -> None:
    """The peak of a worker that finished: programs without a Trainer report nothing else."""
    if _launcher[0]:
        return
    peak, measure = memcap.peak()
    _safely(files.append_progress, {"peak": peak, "peak_measure": measure})


def _chain_excepthook() -> None:
    previous = sys.excepthook

    def excepthook(cls, exc, tb):
        if not isinstance(exc, KeyboardInterrupt) and not _launcher[0]:
            peak, measure = memcap.peak()
            _safely(files.write_failure, exc, phase=_phase[0], peak=peak, peak_measure=measure,
                    step=None)
        previous(cls, exc, tb)

    sys.excepthook = excepthook
