"""Activation offloading: the tensors autograd saves for the backward pass go to pinned host memory
as the forward pass makes them, and come back as the backward pass needs them
(`torch.autograd.graph.save_on_cpu(pin_memory=True)`). The device then holds about one layer's
activations at a time; with checkpointing, not even each layer's input.

It costs host bandwidth, not compute: each saved tensor crosses the host link twice. Whether that
hides behind the GPU's work depends on the link and the model, so its cost is not given as a number.
It comes after checkpointing (which costs a known third) and before the micro-batch shrinks to 1.
"""

from __future__ import annotations

from oomladder.cost import Cost
from oomladder.plan import Facts, Plan
from oomladder.strategies.base import Applied, Outcome, Skipped, Strategy
from oomladder.strategies.registry import register


@register
class ActivationOffloading(Strategy):
    name = "activation_offloading"
    acts_on = "activations"
    cost = Cost(None, "bandwidth-bound: every saved activation crosses the host link twice (from a few % on a fast "
                      "link to several times slower on a slow one)", "activation_offloading")

    def apply(self, plan: Plan, facts: Facts, failure) -> Outcome:
        if plan.activation_offloading is None:
            return Skipped("not known whether activations can be offloaded (only the Hugging Face Trainer's steps "
                           "are wrapped)")
        if plan.activation_offloading:
            return Skipped("activations are already offloaded to host memory")
        if facts.device != "cuda":
            return Skipped(f"the worker ran on {facts.device or 'an unknown device'}: offloading moves activations "
                           f"from a CUDA device to pinned host memory, and there they already are")
        return Applied(plan.replace(activation_offloading=True),
                       "saved activations go to pinned host memory and come back for the backward pass")
