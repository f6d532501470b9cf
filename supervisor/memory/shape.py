"""The shape of a model, as the memory estimator needs it: parameter counts by kind and the few
dimensions that size the activations.

Two sources give the same value: a Hugging Face `config.json` (for `oomladder plan`, before
anything is loaded), and the worker adapter counting the real modules (`from_module`, reported
to the supervisor). Pure arithmetic here; nothing imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oomladder.errors import UsageError
from oomladder.plan import _JournalValue

# The projections of a Llama-style decoder layer and the width of each one's input.
ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj")
MLP_INPUTS = ("gate_proj", "up_proj")


@dataclass(frozen=True)
class ModelShape(_JournalValue):
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    linear_params: int             # the decoder layers' Linear weights: what 8-bit and 4-bit loading quantize
    embedding_params: int
    head_params: int               # lm_head's own weights; 0 when tied to the embedding
    other_params: int              # norms, biases outside Linears, ...
    dtype: str = "float32"         # what the checkpoint holds (config's torch_dtype)
    attention: str = "sdpa"        # "eager" keeps the attention probabilities: heads x seq per token

    @property
    def params(self) -> int:
        return self.linear_params + self.embedding_params + self.head_params + self.other_params

    @property
    def kv_width(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def lora_params(self, rank: int, targets: tuple[str, ...]) -> int:
        """Adapter parameters of LoRA rank `rank` on each named projection of every layer."""
        widths = {"q_proj": (self.hidden, self.hidden), "k_proj": (self.hidden, self.kv_width),
                  "v_proj": (self.hidden, self.kv_width), "o_proj": (self.hidden, self.hidden),
                  "gate_proj": (self.hidden, self.intermediate), "up_proj": (self.hidden, self.intermediate),
                  "down_proj": (self.intermediate, self.hidden)}
        return self.layers * sum(rank * sum(widths[t]) for t in targets if t in widths)


def from_config(config: dict[str, Any]) -> ModelShape:
    """A decoder-only model's shape from its Hugging Face config (Llama, Mistral, Qwen2 and kin)."""
    try:
        h, i = int(config["hidden_size"]), int(config["intermediate_size"])
        layers, heads = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
        vocab = int(config["vocab_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"the model config has no usable {exc} field: oomladder plan reads decoder-only configs "
                         f"(Llama, Mistral, Qwen2 and the like) with hidden_size, intermediate_size, "
                         f"num_hidden_layers, num_attention_heads and vocab_size") from None
    kv_heads = int(config.get("num_key_value_heads") or heads)
    kv = h // heads * kv_heads
    bias = bool(config.get("attention_bias", False))
    attention = h * h + 2 * h * kv + h * h + (2 * kv + 2 * h if bias else 0)
    mlp = 3 * h * i + (2 * i + h if config.get("mlp_bias") else 0)
    tied = bool(config.get("tie_word_embeddings", False))
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32").replace("torch.", "")
    return ModelShape(layers=layers, hidden=h, intermediate=i, heads=heads, kv_heads=kv_heads, vocab=vocab,
                      linear_params=layers * (attention + mlp), embedding_params=vocab * h,
                      head_params=0 if tied else vocab * h, other_params=layers * 2 * h + h, dtype=dtype,
                      attention=str(config.get("_attn_implementation") or config.get("attn_implementation") or "sdpa"))


def read_config(where: str | Path) -> dict[str, Any]:
    """A model folder (its config.json) or a config file; one line of what is wrong otherwise."""
    path = Path(where)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UsageError(f"'{where}' is neither a model folder with a config.json nor a config file: give the "
                         f"folder the model is saved in, or its config.json")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"'{path}' is not a readable JSON model config ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"'{path}' is not a model config (a JSON object with hidden_size and the like)")
    return data.get("text_config", data) if "hidden_size" not in data else data
