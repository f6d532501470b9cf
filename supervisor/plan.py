"""The plan: every setting the ladder controls, as one immutable value.

A field left `None` is one the supervisor has not observed yet (the program had not reached
`TrainingArguments` when it died, say); strategies that need it skip and say so. The worker
adapter applies only the fields that are set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, TypeVar

PRECISIONS = ("fp32", "bf16", "fp16")            # the Trainer's mixed precision
LOAD_DTYPES = ("float32", "bfloat16", "float16", "auto")  # the dtype `from_pretrained` loads in
QUANTIZATIONS = ("none", "int8", "nf4")


_Value = TypeVar("_Value", bound="_JournalValue")


class _JournalValue:
    """A frozen dataclass as it is written to and read from the journal; unknown keys (from a newer
    oomladder) are ignored."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_Value], data: dict[str, Any] | None) -> _Value:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass(frozen=True)
class Plan(_JournalValue):
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    per_device_eval_batch_size: int | None = None
    world_size: int | None = None    # observed from the launcher; None is a single process
    precision: str | None = None
    load_dtype: str | None = None
    quantization: str | None = None
    gradient_checkpointing: bool | None = None
    dataloader_num_workers: int | None = None
    optim: str | None = None
    allocator: str | None = None  # PYTORCH_ALLOC_CONF value, e.g. "expandable_segments:True"
    fused_cross_entropy: bool | None = None   # Liger's fused linear cross-entropy: no full logits (CUDA)
    activation_offloading: bool | None = None  # saved activations in pinned host memory (CUDA)

    @property
    def effective_batch(self) -> int | None:
        """Samples per optimizer step across the world; the ladder never changes it."""
        if self.per_device_train_batch_size is None or self.gradient_accumulation_steps is None:
            return None
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * (self.world_size or 1)

    def split(self, parts: int) -> Plan:
        """The plan a micro-batch run in `parts` chunks equals: the micro-batch divided, the accumulation
        multiplied, the effective batch the same (worker/recovery/in_place.py splits only by what divides it)."""
        batch, accumulation = self.per_device_train_batch_size, self.gradient_accumulation_steps
        if parts <= 1 or batch is None or batch % parts:
            return self
        return self.replace(per_device_train_batch_size=batch // parts,
                            gradient_accumulation_steps=(accumulation or 1) * parts)

    def replace(self, **changes: Any) -> Plan:
        return dataclasses.replace(self, **changes)

    def merged(self, other: Plan) -> Plan:
        """This plan with every field that `other` sets taking `other`'s value."""
        return self.replace(**other.set_fields())

    def set_fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}



FIELD_NAMES = tuple(f.name for f in fields(Plan))
BOOL_FIELDS = ("gradient_checkpointing", "fused_cross_entropy", "activation_offloading")


@dataclass(frozen=True)
class Facts(_JournalValue):
    """What the worker reported about itself: not settings, but what decides whether a rung applies."""

    device: str | None = None            # "cuda", "cpu", "mps", ...
    bf16_supported: bool | None = None
    base_frozen: bool | None = None      # only adapters train (LoRA & co): 8-bit base weights are safe
    trainable_fraction: float | None = None
    output_dir: str | None = None        # where the program's own checkpoints go
    device_memory: int | None = None     # bytes of the device the worker trains on (CUDA), what a plan must fit in
    adapters_expected: bool | None = None  # peft was imported when the model loaded: its base will likely be frozen
    offloaded: str | None = None         # what device_map="auto" put on the CPU or disk, said in a person's words
    liger: bool | None = None            # liger-kernel is importable in the worker (the fused cross-entropy rung)
    coupled_rows: str | None = None      # why a micro-batch's rows are not independent (batch norm in training mode)
    reads_flags: bool | None = None      # TrainingArguments come from the command line (HfArgumentParser, TrlParser)
    trains_in: str | None = None         # the training process's command line, when a launcher started it
    notebook: str | None = None          # the notebook that trains, when a command line names one (papermill)



def changes(before: Plan, after: Plan) -> list[tuple[str, Any, Any]]:
    """(field, old, new) for every field that differs, in the plan's field order."""
    return [(name, getattr(before, name), getattr(after, name)) for name in FIELD_NAMES
            if getattr(before, name) != getattr(after, name)]


def describe_changes(before: Plan, after: Plan, separator: str = ", ") -> str:
    """`per_device_train_batch_size 16→8, gradient_accumulation_steps 1→2` (or `-` for none)."""
    parts = [f"{name} {_show(old)}→{_show(new)}" for name, old, new in changes(before, after)]
    return separator.join(parts) or "-"


def _show(value: Any) -> str:
    return "unset" if value is None else str(value)


def coerce_field(name: str, text: str) -> Any:
    """Parse `--set name=text` into the field's type; raises ValueError with what is accepted."""
    if name not in FIELD_NAMES:
        raise ValueError(f"'{name}' is not a plan setting (settings: {', '.join(FIELD_NAMES)})")
    choices = {"precision": PRECISIONS, "load_dtype": LOAD_DTYPES, "quantization": QUANTIZATIONS}
    if name in choices:
        if text not in choices[name]:
            raise ValueError(f"{name} must be one of {', '.join(choices[name])}, not '{text}'")
        return text
    if name in BOOL_FIELDS:
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name} must be true or false, not '{text}'")
        return lowered in ("true", "1", "yes")
    if name in ("optim", "allocator"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not '{text}'") from None
    minimum = 0 if name == "dataloader_num_workers" else 1
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value
