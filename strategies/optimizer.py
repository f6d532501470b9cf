"""8-bit AdamW: bitsandbytes keeps Adam's two moments in 8 bits, blockwise quantized, about 2 bytes
per trained parameter instead of 8. In a full fine-tune the optimizer states are often the largest
term (twice the fp32 weights), and this rung removes three quarters of them at no cost in speed.

Paged on CUDA (`paged_adamw_8bit`: the states can spill to host memory under pressure), plain on the
CPU (`adamw_bnb_8bit`: bitsandbytes runs 8-bit AdamW there; its paged variant falls back to plain).
A run resumed after the switch carries its Adam moments over, quantized (worker/recovery/optimizer_state.py).
The numerics change slightly: the moments are rounded to 8 bits, as in Dettmers et al., 2021.
"""

from __future__ import annotations

from oomladder.cost import Cost
from oomladder.plan import Facts, Plan
from oomladder.strategies.base import Applied, Outcome, Skipped, Strategy
from oomladder.strategies.registry import register

# Below this share of the model in training, the optimizer states are a sliver (LoRA and other adapters).
MANY = 0.10
_BNB_DEVICES = ("cuda", "cpu", "xpu", "hip")


@register
class Optimizer8bit(Strategy):
    name = "optimizer_8bit"
    acts_on = "optimizer states"
    cost = Cost(0.0, "~0 %: bitsandbytes updates in place, in one kernel", "optim",
                "Adam's moments rounded to 8 bits (blockwise): close to 32-bit Adam, not identical")

    def apply(self, plan: Plan, facts: Facts, failure) -> Outcome:
        optim = (plan.optim or "").lower()
        if not optim:
            return Skipped("the optimizer is not known yet (the program died before building TrainingArguments)")
        if "8bit" in optim:
            return Skipped(f"the optimizer is already 8-bit ({plan.optim})")
        if "adam" not in optim or "galore" in optim or "apollo" in optim:
            return Skipped(f"{plan.optim} is not AdamW: only AdamW has an 8-bit form this rung can switch to")
        share = facts.trainable_fraction
        if facts.base_frozen or (share is not None and share < MANY):
            what = (f"only {share * 100:.2g} % of the parameters train" if share is not None
                    else "only adapters train, the base is frozen")
            return Skipped(f"{what}: their optimizer states are a sliver of the memory, so 8-bit states would save "
                           f"next to nothing (this rung is for full fine-tunes)")
        if share is None:
            return Skipped("not known yet how many parameters train (the program had not built its Trainer)")
        if facts.device not in _BNB_DEVICES:
            return Skipped(f"bitsandbytes does not run on {facts.device or 'an unknown device'}")
        target = "paged_adamw_8bit" if facts.device == "cuda" else "adamw_bnb_8bit"
        return Applied(plan.replace(optim=target),
                       f"{share * 100:.0f} % of the parameters train: 8-bit AdamW ({target}) keeps Adam's moments "
                       f"in about 2 bytes per parameter instead of 8, at no cost in speed")
