"""The ladder's rungs. Importing this package registers the built-in strategies by name."""

from oomladder.strategies import (  # noqa: F401  (register)
    batch,
    bf16,
    checkpointing,
    expandable_segments,
    fused_cross_entropy,
    offloading,
    optimizer,
    quantize,
    workers,
)
from oomladder.strategies.base import Applied, Outcome, Skipped, Strategy
from oomladder.strategies.registry import available, get, register

__all__ = ["Applied", "Outcome", "Skipped", "Strategy", "available", "get", "register"]
