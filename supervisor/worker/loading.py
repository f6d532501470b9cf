"""`from_pretrained`, for every framework: observe the dtype and quantization the program asks for,
and load the base weights as the plan says (dtype, bitsandbytes 8-bit or 4-bit)."""

from __future__ import annotations

import functools
from typing import Any

from oomladder.worker import common, memcap
from oomladder.worker.common import observe, safely

HOOKS = {"transformers.modeling_utils": lambda module: patch_modeling_utils(module)}


def patch_modeling_utils(module) -> None:
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
            requested = safely(_requested_load, kwargs) or {}
            changed = safely(_apply_to_load, kwargs, common.plan()) or False
            model = original(klass, *args, **kwargs)
            if not changed and "load_dtype" not in requested:
                requested["load_dtype"] = str(getattr(model, "dtype", "")).replace("torch.", "") or None
            safely(observe, requested)
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
