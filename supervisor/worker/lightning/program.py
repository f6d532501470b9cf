"""What the Lightning adapter reads from the program's own objects: the batch size where Lightning keeps
it, the Transformers model inside a LightningModule, what of the module trains, and how long the fit is."""

from __future__ import annotations

from typing import Any

_ADAPTER_TAGS = ("lora_", "modules_to_save", "adapter", "prompt", "ia3_")  # peft's trainable parameters


def batch_size_of(pl_module, parsing) -> int | None:
    """The batch size where Lightning's BatchSizeFinder reads and writes it (`parsing.lightning_hasattr`): the
    module's attribute or hyperparameter, or the datamodule's. None when there is none to set."""
    if not parsing.lightning_hasattr(pl_module, "batch_size"):
        return None
    value = parsing.lightning_getattr(pl_module, "batch_size")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def max_steps(trainer) -> int | None:
    """The optimizer steps the fit will take: `max_steps`, or Lightning's estimate from the epochs."""
    steps = trainer.max_steps if trainer.max_steps != -1 else trainer.estimated_stepping_batches
    return int(steps) if steps != float("inf") else None


def transformers_model(pl_module):
    """The outermost Transformers model inside the LightningModule, if it wraps one."""
    for module in pl_module.modules():
        if hasattr(module, "config") and hasattr(module, "get_output_embeddings") and (
                hasattr(module, "activation_checkpointing_enable") or hasattr(module, "gradient_checkpointing_enable")):
            return module
    return None


def training_facts(pl_module) -> dict[str, Any]:
    """What of the module trains: the share of its parameters, and whether only adapters (LoRA & co) do, where
    8-bit base weights are safe. As the Trainer adapter counts it."""
    total = trainable = 0
    base_frozen = any(hasattr(m, "peft_config") for m in pl_module.modules())
    for name, param in pl_module.named_parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            if not any(tag in name for tag in _ADAPTER_TAGS):
                base_frozen = False
    return {"base_frozen": bool(base_frozen and trainable),
            "trainable_fraction": round(trainable / total, 6) if total else None}
