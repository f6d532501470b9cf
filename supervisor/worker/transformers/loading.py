"""`from_pretrained`, for every framework: observe the dtype and quantization the program asks for,
and load the base weights as the plan says (dtype, bitsandbytes 8-bit or 4-bit).

The load request (the checkpoint's folder, its config's dimensions, its files' size, dtype, quantization,
device_map) is told to the supervisor before the real `from_pretrained` runs, and the phase is "load"
while it does: a load that runs out of memory can still be answered by the rungs that change the load.
A model `device_map="auto"` put partly on the CPU or disk is reported; with `--no-offload` it is an
out-of-memory error, so the ladder quantizes until the model fits on the device.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

from oomladder.worker import common
from oomladder.worker.common import observe, safely
from oomladder.worker.hooks import memcap
from oomladder.worker.state import STATE

HOOKS = {"transformers.modeling_utils": lambda module: patch_modeling_utils(module)}


def patch_modeling_utils(module) -> None:
    cls = module.PreTrainedModel
    original = cls.from_pretrained.__func__
    depth = 0

    @functools.wraps(original)
    def from_pretrained(klass, *args, **kwargs):
        nonlocal depth
        memcap.arm()
        if depth:  # an Auto class calling the concrete class: apply the plan once
            return original(klass, *args, **kwargs)
        depth += 1
        try:
            with common.loading():
                return _load(original, klass, args, kwargs)
        finally:
            depth -= 1

    cls.from_pretrained = classmethod(from_pretrained)
    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        memcap.arm()  # a model built from its config, without from_pretrained
        return original_init(self, *args, **kwargs)

    cls.__init__ = __init__


def _load(original, klass, args: tuple, kwargs: dict[str, Any]):
    """`from_pretrained` as the plan says, the request told to the supervisor before it runs."""
    requested = safely(_requested_load, kwargs) or {}
    STATE.observed["load"] = safely(_load_request, args[0] if args else kwargs.get(
        "pretrained_model_name_or_path"), kwargs)
    if "load_dtype" not in requested and (STATE.observed["load"] or {}).get("default_dtype"):
        requested["load_dtype"] = STATE.observed["load"]["default_dtype"]
    safely(observe, requested, {"adapters_expected": "peft" in sys.modules,  # told before the load
                                "device": _device_guess()})
    changed = safely(_apply_to_load, kwargs, common.plan()) or False
    model = original(klass, *args, **kwargs)
    if not changed and "load_dtype" not in requested:
        requested["load_dtype"] = str(getattr(model, "dtype", "")).replace("torch.", "") or None
    safely(observe, requested)
    _check_offload(model)
    return model


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


_CONFIG_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "tie_word_embeddings", "torch_dtype", "dtype", "attention_bias",
                "mlp_bias")


def _load_request(where: Any, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """What is about to load, from the checkpoint's own folder (nothing is downloaded to find out)."""
    folder = Path(str(where)) if where is not None else None
    if folder is None or not (folder / "config.json").is_file():
        return None
    config = json.loads((folder / "config.json").read_text())
    config = config.get("text_config", config) if "hidden_size" not in config else config
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32").replace("torch.", "")
    weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()]
    import transformers
    major = int(transformers.__version__.split(".")[0])
    return {"path": str(folder), "config": {k: config[k] for k in _CONFIG_KEYS if k in config},
            "files_bytes": sum(p.stat().st_size for p in weights), "device_map": str(kwargs.get("device_map")),
            # what a `from_pretrained` without dtype loads: the checkpoint's dtype from Transformers 5 on
            "default_dtype": dtype if major >= 5 else "float32"}


def _check_offload(model) -> None:
    """`device_map="auto"` may put what does not fit on the device on the CPU or disk, and training then runs
    many times slower with no error: reported, and with --no-offload an out-of-memory error."""
    placed = set((getattr(model, "hf_device_map", None) or {}).values())
    import torch
    off = sorted(str(d) for d in placed if str(d) == "disk" or (str(d) == "cpu" and torch.cuda.is_available()))
    if not off:
        return
    moved = sum(1 for d in model.hf_device_map.values() if str(d) in off)
    safely(observe, None, {"offloaded": f"{moved} of {len(model.hf_device_map)} modules on {' and '.join(off)}"})
    if os.environ.get("OOMLADDER_NO_OFFLOAD"):
        raise RuntimeError(f"oomladder: --no-offload: from_pretrained put {moved} of {len(model.hf_device_map)} "
                           f"modules on {' and '.join(off)}: the model does not fit on the device")


def _device_guess() -> str:
    """Where training will run, before the program says: the device a Trainer would pick."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"
