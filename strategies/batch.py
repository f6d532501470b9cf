"""Smaller micro-batches, more accumulation: the effective batch, and so the training, stays the same."""

from __future__ import annotations

from oomladder.cost import Cost
from oomladder.plan import Facts, Plan
from oomladder.strategies.base import Applied, Outcome, Skipped, Strategy
from oomladder.strategies.registry import register


@register
class HalveBatch(Strategy):
    name = "halve_batch"
    changes_code = False
    acts_on = "activations"
    cost = Cost(0.10, "about +10 % per halving while the GPU stays busy, more near a micro-batch of 1 (smaller "
                      "matmuls, more passes per optimizer step)", "per_device_train_batch_size")
    repeatable = True
    params = {"min_batch": int}

    def validate(self) -> None:
        from oomladder.errors import StrategyError
        if self.options.get("min_batch", 1) < 1:
            raise StrategyError("strategy 'halve_batch': min_batch must be 1 or more")

    def apply(self, plan: Plan, facts: Facts, failure) -> Outcome:
        batch, accumulation = plan.per_device_train_batch_size, plan.gradient_accumulation_steps
        if batch is None or accumulation is None:
            return Skipped("the batch size is not known yet (the program died before building TrainingArguments)")
        floor = self.options.get("min_batch", 1)
        if batch // 2 < floor:
            return Skipped(f"per-device batch {batch} is at the floor (min_batch {floor})")
        if facts.coupled_rows:
            return Skipped(f"{facts.coupled_rows}: a smaller micro-batch would train differently, whatever the "
                           f"accumulation")
        if batch % 2:
            return Skipped(f"per-device batch {batch} is odd: halving it would change the effective batch "
                           f"{plan.effective_batch}")
        new = plan.replace(per_device_train_batch_size=batch // 2, gradient_accumulation_steps=accumulation * 2)
        return Applied(new, f"half the activations per micro-batch; accumulation doubles so the effective batch "
                            f"stays {plan.effective_batch}")


@register
class HalveEvalBatch(Strategy):
    """Evaluation has no accumulation: its batch only sets speed, so it can shrink freely."""

    name = "halve_eval_batch"
    changes_code = False
    acts_on = "activations"
    cost = Cost(0.0, "~0 % in training; evaluation runs in more, smaller batches", "per_device_eval_batch_size")
    phases = frozenset({"eval"})
    repeatable = True

    def apply(self, plan: Plan, facts: Facts, failure) -> Outcome:
        batch = plan.per_device_eval_batch_size
        if batch is None:
            return Skipped("the evaluation batch size is not known yet")
        if batch <= 1:
            return Skipped("the evaluation batch is already 1")
        return Applied(plan.replace(per_device_eval_batch_size=batch // 2),
                       "the OOM struck during evaluation: a smaller evaluation batch, training untouched")
