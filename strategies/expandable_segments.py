"""Let PyTorch's CUDA allocator grow segments instead of splitting fixed blocks: memory lost to
fragmentation comes back at no cost in speed, so it is the free first rung."""

from __future__ import annotations

from oomladder.classify import is_fragmented
from oomladder.cost import Cost
from oomladder.plan import Facts, Plan
from oomladder.strategies.base import Applied, Outcome, Skipped, Strategy
from oomladder.strategies.registry import register

SETTING = "expandable_segments:True"
_CACHING_DEVICES = ("cuda", "hip", "xpu")


@register
class ExpandableSegments(Strategy):
    name = "expandable_segments"
    fixes_fragmentation = True
    cost = Cost(0.0, "~0 %: an allocator setting", "allocator")

    def apply(self, plan: Plan, facts: Facts, failure) -> Outcome:
        if facts.device not in _CACHING_DEVICES:
            where = facts.device or "an unknown device"
            return Skipped(f"the worker ran on {where}: only a CUDA caching allocator has segments to expand")
        if plan.allocator and "expandable_segments:true" in plan.allocator.lower():
            return Skipped("expandable segments are already on")
        setting = f"{plan.allocator},{SETTING}" if plan.allocator else SETTING
        why = ("the OOM message shows memory reserved but unallocated: fragmentation"
               if is_fragmented(failure) else "memory lost to fragmentation comes back at no cost in speed")
        return Applied(plan.replace(allocator=setting), f"expandable allocator segments: {why}")
