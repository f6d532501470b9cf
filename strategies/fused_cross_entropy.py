"""Liger's fused linear cross-entropy: the loss is computed from the last hidden states in chunks,
so the logits (batch x sequence x vocabulary, in fp32, with their gradient) never exist whole.
With a large vocabulary at long sequences they are often the largest single term of the peak.

Through the Trainer's own `use_liger_kernel`, with only the fused linear cross-entropy turned on
(`liger_kernel_config`): the model's other layers keep their code. Triton kernels: CUDA only, and
only where liger-kernel is installed (`pip install 'oomladder[liger]'`).
"""

from __future__ import annotations

from oomladder.cost import Cost
from oomladder.plan import Facts, Plan
from oomladder.strategies.base import Applied, Outcome, Skipped, Strategy
from oomladder.strategies.registry import register


@register
class FusedCrossEntropy(Strategy):
    name = "fused_cross_entropy"
    acts_on = "logits"
    cost = Cost(0.0, "~0 %: the same matmul in chunks, often faster", "fused_cross_entropy",
                "the same loss, summed in chunks")

    def apply(self, plan: Plan, facts: Facts, failure) -> Outcome:
        if plan.fused_cross_entropy is None:
            return Skipped("not known whether the loss can be fused (only the Hugging Face Trainer's is)")
        if plan.fused_cross_entropy:
            return Skipped("the fused linear cross-entropy is already on")
        if facts.device != "cuda":
            return Skipped(f"the worker ran on {facts.device or 'an unknown device'}: Liger's fused cross-entropy "
                           f"is a Triton kernel, CUDA only")
        if facts.liger is False:
            return Skipped("liger-kernel is not installed where the program runs (pip install 'oomladder[liger]')")
        return Applied(plan.replace(fused_cross_entropy=True),
                       "Liger's fused linear cross-entropy computes the loss in chunks: the full logits and their "
                       "gradient are never held")
