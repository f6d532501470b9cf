"""Gradient checkpointing: keep each layer's inputs, recompute its activations in the backward pass.

Non-reentrant (`use_reentrant=False`), which PyTorch recommends and which works with frozen
inputs, as in LoRA, where the reentrant variant silently produces no gradients.
"""

from __future__ import annotations

from oomladder.cost import Cost
from oomladder.plan import Facts, Plan
from oomladder.strategies.base import Applied, Outcome, Skipped, Strategy
from oomladder.strategies.registry import register


@register
class GradientCheckpointing(Strategy):
    name = "gradient_checkpointing"
    acts_on = "activations"
    cost = Cost(0.33, "about +33 % compute: every layer's forward runs again in the backward pass",
                "gradient_checkpointing")

    def apply(self, plan: Plan, facts: Facts, failure) -> Outcome:
        if plan.gradient_checkpointing is None:
            return Skipped("not known yet whether checkpointing is on (the program died before building "
                           "TrainingArguments)")
        if plan.gradient_checkpointing:
            return Skipped("gradient checkpointing is already on")
        return Applied(plan.replace(gradient_checkpointing=True),
                       "activations are recomputed in the backward pass (non-reentrant): about a third more compute")
