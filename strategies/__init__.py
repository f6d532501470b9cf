"""The ladder's rungs. Importing this package registers the built-in strategies by name."""

from strategies import batch, bf16, checkpointing, expandable_segments, quantize, workers  # noqa: F401  (register)
from strategies.base import Applied, Outcome, Skipped, Strategy
from strategies.registry import available, get, register

__all__ = ["Applied", "Outcome", "Skipped", "Strategy", "available", "get", "register"]
