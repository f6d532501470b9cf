"""Full precision to bf16: autocast halves activations; frozen base weights load in bf16 too.

Trainable weights keep fp32 master copies (Trainer's `bf16=True` is mixed precision), so
optimizer numerics do not change. fp16 is never chosen: it needs loss scaling and overflows
where bf16 does not, and mixing it with bf16 is the seed note's mistake.
"""

from __future__ import annotations

from oomladder.cost import Cost
from oomladder.plan import Facts, Plan
from oomladder.strategies.base import Applied, Outcome, Skipped, Strategy
from oomladder.strategies.registry import register


@register
class Bf16(Strategy):
    name = "bf16"
    acts_on = "activations"
    cost = Cost(0.0, "~0 % on a GPU with bf16 tensor cores (often faster); slower on many CPUs", "precision",
                "bf16 autocast: matmuls in bf16, fp32 master weights")
    phases = frozenset({"train", "load"})

    def apply(self, plan: Plan, facts: Facts, failure) -> Outcome:
        if (failure.phase or "train") == "load":
            return _while_loading(plan, facts)
        if plan.precision is None:
            return Skipped("the program's precision is not known yet (it died before building TrainingArguments)")
        if facts.bf16_supported is False:
            return Skipped(f"{facts.device or 'this device'} does not support bf16")
        load_bf16 = bool(facts.base_frozen) and plan.quantization in (None, "none") and plan.load_dtype == "float32"
        if plan.precision in ("bf16", "fp16") and not load_bf16:
            return Skipped(f"training already runs in {plan.precision}")
        changes, parts = {}, []
        if plan.precision == "fp32":
            changes["precision"] = "bf16"
            parts.append("bf16 autocast halves activation memory")
        if load_bf16:
            changes["load_dtype"] = "bfloat16"
            parts.append("frozen base weights load in bf16, half their fp32 size")
        return Applied(plan.replace(**changes), "; ".join(parts))


def _while_loading(plan: Plan, facts: Facts) -> Outcome:
    """The model ran out of memory while it loaded: load the frozen base weights in bf16, and train in bf16."""
    if plan.load_dtype in ("bfloat16", "float16"):
        return Skipped(f"the weights already load in {plan.load_dtype}")
    if facts.bf16_supported is False:
        return Skipped(f"{facts.device or 'this device'} does not support bf16")
    frozen = facts.base_frozen if facts.base_frozen is not None else facts.adapters_expected
    if not frozen:
        return Skipped("the base weights train (the program does not use peft adapters): loading them in bf16 "
                       "would train bf16 weights, not fp32 ones under bf16 autocast")
    return Applied(plan.replace(load_dtype="bfloat16", precision="bf16" if plan.precision in (None, "fp32")
                                else plan.precision),
                   "the model ran out of memory while it loaded: frozen base weights load in bf16, half their fp32 "
                   "size")
