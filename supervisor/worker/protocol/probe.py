"""What the memory estimator needs from a live worker: the model's shape, counted from its real
modules, and the shape of the batches it trains on.

Counting modules rather than trusting the config is what makes a quantized or adapted model
come out right: a 4-bit Linear's parameter holds half its weights, so Linears count as
in x out, and peft's adapter layers are left to `trainable_params`.
"""

from __future__ import annotations

from typing import Any

from oomladder.worker.state import STATE


def note_batch(inputs: Any) -> None:
    """The (micro-batch, sequence length) of the step about to run, and the largest one yet."""
    ids = inputs.get("input_ids") if isinstance(inputs, dict) else None
    if ids is None or getattr(ids, "dim", lambda: 0)() != 2:
        return
    shape = (int(ids.shape[0]), int(ids.shape[1]))
    STATE.batch_now = shape
    largest = STATE.batch_largest
    if largest is None or shape[0] * shape[1] > largest[0] * largest[1]:
        STATE.batch_largest = shape


def batch_shapes() -> dict[str, list[int] | None]:
    return {key: list(value) if value else None
            for key, value in (("current", STATE.batch_now), ("largest", STATE.batch_largest))}


def model_report(model) -> dict[str, Any] | None:
    """The shape (memory/shape.py's ModelShape fields) and what trains; None for a model that is
    not a language model with the usual config fields, which the ladder then walks without estimates."""
    import torch.nn as nn

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    dims = {key: getattr(config, key, None) for key in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                         "num_attention_heads", "vocab_size")}
    if config is None or None in dims.values():
        return None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None:
        return None  # no vocabulary-sized head (a classifier, say): the estimate is for language models
    embedding = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    tied = head is not None and embedding is not None and head.weight is embedding.weight
    counts = {"linear_params": 0, "embedding_params": 0, "head_params": 0, "other_params": 0}
    targets: set[str] = set()
    for name, module in base.named_modules():
        if "lora_" in name:
            continue  # adapters: counted as what trains
        if hasattr(module, "lora_A"):
            targets.add(name.rsplit(".", 1)[-1])
        if module is head:
            counts["head_params"] += 0 if tied else module.in_features * module.out_features
        elif isinstance(module, nn.Linear):
            counts["linear_params"] += module.in_features * module.out_features + (
                module.out_features if module.bias is not None else 0)
        elif isinstance(module, nn.Embedding):
            counts["embedding_params"] += module.weight.numel()
        else:
            counts["other_params"] += sum(p.numel() for n, p in module.named_parameters(recurse=False)
                                          if "lora_" not in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # Transformers 4.56 renamed torch_dtype to dtype, and reading the old name warns: only where there is no new one.
    dtype = (config.dtype if hasattr(config, "dtype") else getattr(config, "torch_dtype", None)) or "float32"
    shape = {"layers": dims["num_hidden_layers"], "hidden": dims["hidden_size"],
             "intermediate": dims["intermediate_size"], "heads": dims["num_attention_heads"],
             "kv_heads": getattr(config, "num_key_value_heads", None) or dims["num_attention_heads"],
             "vocab": dims["vocab_size"], **counts, "dtype": str(dtype).replace("torch.", ""),
             "attention": str(getattr(config, "_attn_implementation", None) or "sdpa")}
    adapters = hasattr(model, "peft_config") and trainable < sum(p.numel() for p in model.parameters())
    return {"shape": shape, "adapters": bool(adapters), "trainable_params": int(trainable),
            "lora_targets": sorted(targets)}
