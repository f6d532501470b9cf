"""The plan as a Trainer's `TrainingArguments` (and so TRL's configs, which subclass them): what the program's own
arguments say, and one table, `APPLY`, from each plan field to the setting it changes. A new rung adds a row here,
or one in `ELSEWHERE` that says where its field goes instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def observed(args) -> dict[str, Any]:
    """The program's own settings, in the plan's fields, as its arguments hold them."""
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


def _same_name(name: str) -> Callable[[Any, Any], None]:
    def apply(args, value) -> None:
        setattr(args, name, value)
    return apply


def _workers(args, value: int) -> None:
    args.dataloader_num_workers = value
    if value == 0:
        args.dataloader_prefetch_factor = None  # only allowed with workers
        args.dataloader_persistent_workers = False


def _precision(args, value: str) -> None:
    args.bf16, args.fp16 = value == "bf16", value == "fp16"
    if args.bf16 and not args.use_cpu and not _accelerator_present():
        # Transformers refuses bf16 on a machine without a GPU unless told the run is on the CPU
        # ("Your setup doesn't support bf16/gpu"); the run is on the CPU either way.
        args.use_cpu = True


def _checkpointing(args, value: bool) -> None:
    # Under Transformers 5's name where it has one: setting the deprecated alias makes the Trainer warn.
    name = "activation_checkpointing" if hasattr(args, "activation_checkpointing") else "gradient_checkpointing"
    setattr(args, name, value)
    if value:
        given = getattr(args, f"{name}_kwargs", None) or args.gradient_checkpointing_kwargs
        setattr(args, f"{name}_kwargs", {**(given if isinstance(given, dict) else {}), "use_reentrant": False})


def _fused_cross_entropy(args, value: bool) -> None:
    if value and hasattr(args, "liger_kernel_config"):
        # Only the fused linear cross-entropy: the model's other layers keep their own code.
        args.use_liger_kernel = True
        args.liger_kernel_config = {"fused_linear_cross_entropy": True, "cross_entropy": False, "rope": False,
                                    "swiglu": False, "rms_norm": False}


# Each plan field the Trainer's arguments carry, and how its value is set on them (where the plan sets it).
APPLY: dict[str, Callable[[Any, Any], None]] = {
    "per_device_train_batch_size": _same_name("per_device_train_batch_size"),
    "gradient_accumulation_steps": _same_name("gradient_accumulation_steps"),
    "per_device_eval_batch_size": _same_name("per_device_eval_batch_size"),
    "dataloader_num_workers": _workers,
    "optim": _same_name("optim"),
    "precision": _precision,
    "gradient_checkpointing": _checkpointing,
    "fused_cross_entropy": _fused_cross_entropy,
}


# The plan's other fields, and where a Trainer program gets them.
ELSEWHERE = {
    "load_dtype": "from_pretrained's dtype (loading.py)",
    "quantization": "from_pretrained's quantization_config (loading.py)",
    "activation_offloading": "each training step, under save_on_cpu (trainer.py)",
    "allocator": "PYTORCH_ALLOC_CONF, set at launch",
    "world_size": "the launcher's",
}


def apply(args, plan: dict[str, Any]) -> None:
    """The plan's fields on the program's arguments, each as `APPLY` says."""
    for name, change in APPLY.items():
        if plan.get(name) is not None:
            change(args, plan[name])
    # The supervisor, not the Trainer, chooses the batch: the Trainer's own search would undo the plan.
    args.auto_find_batch_size = False


def _accelerator_present() -> bool:
    import torch
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or bool(mps and mps.is_available())
            or bool(xpu and hasattr(xpu, "is_available") and xpu.is_available()))
