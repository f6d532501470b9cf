"""Load the frozen base weights quantized through bitsandbytes' `BitsAndBytesConfig`.

Only where the base is frozen (adapters such as LoRA train): quantized weights cannot be
trained, so quantizing a full fine-tune would silently change what is learned.
"""

from __future__ import annotations

from oomladder.cost import Cost
from oomladder.plan import Facts, Plan
from oomladder.strategies.base import Applied, Outcome, Skipped, Strategy
from oomladder.strategies.registry import register

_BNB_DEVICES = ("cuda", "cpu", "xpu", "hip")


class _Quantize(Strategy):
    level: str
    why: str
    phases = frozenset({"train", "load"})

    def apply(self, plan: Plan, facts: Facts, failure) -> Outcome:
        if plan.quantization is None:
            return Skipped("the model was not loaded with from_pretrained, where quantization is applied")
        if plan.quantization in ("int8", "nf4") and _rank(plan.quantization) >= _rank(self.level):
            return Skipped(f"base weights are already loaded in {plan.quantization}")
        frozen = facts.base_frozen if facts.base_frozen is not None else facts.adapters_expected
        if frozen is None:
            return Skipped("not known yet whether the base weights are frozen (the program had not built its Trainer)")
        if not frozen:
            return Skipped("the base weights train: quantized weights cannot, so this rung only applies to "
                           "adapter training such as LoRA")
        if facts.device not in _BNB_DEVICES:
            return Skipped(f"bitsandbytes does not run on {facts.device or 'an unknown device'}")
        return Applied(plan.replace(quantization=self.level), self.why)


def _rank(level: str) -> int:
    return {"none": 0, "int8": 1, "nf4": 2}[level]


@register
class Int8(_Quantize):
    """Load the frozen base weights in 8 bits (bitsandbytes' LLM.int8()): about 1 byte per parameter, a quarter
    of fp32 and half of bf16. Only for adapter training such as LoRA, where the base weights do not train."""

    name = "int8"
    level = "int8"
    acts_on = "weights"
    cost = Cost(0.25, "about +25 %: 8-bit matmuls dequantize their weights on every pass", "quantization",
                "frozen base weights rounded to 8 bits")
    why = "frozen base weights load in 8-bit (BitsAndBytesConfig(load_in_8bit=True)): about 1 byte per parameter"


@register
class Nf4(_Quantize):
    """Load the frozen base weights in 4 bits (NF4 with double quantization, as in QLoRA): about half a byte per
    parameter. The last resort, since it changes the numerics most of any rung; only for adapter training."""

    name = "nf4"
    level = "nf4"
    acts_on = "weights"
    cost = Cost(0.30, "about +30 %: 4-bit weights dequantize on every pass", "quantization",
                "frozen base weights rounded to 4 bits (NF4): the largest change in numerics of any rung")
    why = "frozen base weights load in 4-bit NF4 (BitsAndBytesConfig(load_in_4bit=True)): about 0.5 byte per parameter"
