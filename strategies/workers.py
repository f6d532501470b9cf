"""Fewer DataLoader workers: each holds its own copy of the dataset and prefetched batches in host
memory, so this answers host-memory deaths (a killed DataLoader worker, the kernel's OOM killer)."""

from __future__ import annotations

from oomladder.cost import Cost
from oomladder.plan import Facts, Plan
from oomladder.strategies.base import Applied, Outcome, Skipped, Strategy
from oomladder.strategies.registry import register


@register
class FewerWorkers(Strategy):
    name = "fewer_workers"
    changes_code = False
    memory = frozenset({"host"})
    cost = Cost(0.0, "~0 % unless loading data was what kept the GPU waiting", "dataloader_num_workers")
    phases = frozenset({"train", "eval"})
    repeatable = True

    def apply(self, plan: Plan, facts: Facts, failure) -> Outcome:
        workers = plan.dataloader_num_workers
        if workers is None:
            return Skipped("the number of DataLoader workers is not known yet")
        if workers == 0:
            return Skipped("data already loads in the main process (no workers)")
        return Applied(plan.replace(dataloader_num_workers=workers // 2),
                       "each DataLoader worker holds its own dataset copy and prefetched batches in host memory")
