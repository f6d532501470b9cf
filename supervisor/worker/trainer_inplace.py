"""The Hugging Face Trainer's side of in-place recovery (inplace.py), and so TRL's: the micro-step is
`Trainer.training_step(model, inputs, num_items_in_batch)`, which runs the forward and the backward of
one micro-batch. Split, it runs once per chunk of the same rows, and the chunks' gradients add up to
the unsplit one's:

- A loss the Trainer scales by `num_items_in_batch` (the model's token mean over the whole optimizer
  step, or a `compute_loss_func`) is a sum over tokens divided by that count: each chunk gets the same
  count, and the chunks' losses add up to the micro-batch's.
- Any other loss is a mean over the micro-batch, which the Trainer divides by the accumulation: each
  chunk's loss is weighted by its share of the labelled tokens (of the rows, without labels).

The effective batch, the data order and the learning-rate schedule are the Trainer's and do not change:
the outer loop still sees one micro-step with its one loss. Gradient checkpointing, at a row per chunk, is
turned on in the model as the Trainer does it at its start, and in its arguments.

It steps aside (the supervisor relaunches, and the journal says why) for several processes (a split on one
rank would add collectives the others never join), DeepSpeed, and a `compute_loss` of the program's own,
which may not scale as the Trainer's does.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

from oomladder.worker import chunks, inplace
from oomladder.worker.common import is_memory_failure, safely


def training_step(trainer, original, model, inputs, args: tuple, kwargs: dict) -> Any:
    where = safely(_step_of, trainer, inputs)
    if where is None:
        return original(trainer, model, inputs, *args, **kwargs)
    num_items = args[0] if args else kwargs.get("num_items_in_batch")

    def run(pieces: int):
        if pieces == 1:
            return original(trainer, model, inputs, *args, **kwargs)
        return _split(trainer, original, model, inputs, where.rows, pieces, num_items, args, kwargs)

    return inplace.recover(run, inplace.trainable(model), where, is_memory_failure)


def _step_of(trainer, inputs) -> inplace.Step:
    targs = trainer.args
    rows, no_rows = chunks.batch_rows(inputs)
    return inplace.Step(step=trainer.state.global_step + 1, rows=rows, seq=chunks.seq_len(inputs),
                        batch=targs.per_device_train_batch_size, accumulation=targs.gradient_accumulation_steps,
                        refuse=_refuse(trainer) or no_rows, checkpoint=functools.partial(_checkpointing, trainer))


def _checkpointing(trainer) -> bool:
    """Turn gradient checkpointing on in this Trainer's model, as the plan's rung does at a launch
    (non-reentrant); False where it cannot: already on, not a model that supports it, or not on the run's
    ladder. Asked only at a row per chunk, so nothing of it runs in a step that fits."""
    args = trainer.args
    if (os.environ.get("OOMLADDER_IN_PLACE_CHECKPOINTING", "1") == "0"
            or getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing):
        return False
    model = trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft's wrapper
    if not getattr(base, "supports_gradient_checkpointing", False):
        return False
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(getattr(base, "config", None), "use_cache", False):
        base.config.use_cache = False  # a cache is not kept under checkpointing
    # The Trainer's arguments say so too (Transformers 5's name and its deprecated alias): what it saves with a
    # checkpoint shows the plan the run goes on with.
    for name in ("activation_checkpointing", "gradient_checkpointing"):
        if hasattr(args, name):
            setattr(args, name, True)
            given = getattr(args, f"{name}_kwargs", None)
            setattr(args, f"{name}_kwargs", {**(given if isinstance(given, dict) else {}), **kwargs})
    return True


def _refuse(trainer) -> str | None:
    """Why this Trainer's step cannot be split safely, or None."""
    targs = trainer.args
    if int(getattr(targs, "world_size", 1) or 1) > 1 or int(getattr(targs, "n_gpu", 1) or 1) > 1:
        return ("several processes (or GPUs) train together: a split on one would add gradient exchanges the "
                "others never join")
    kind = getattr(getattr(getattr(trainer, "accelerator", None), "distributed_type", None), "value", "")
    if str(kind).upper() == "DEEPSPEED":
        return "DeepSpeed runs the backward itself"
    compute_loss = type(trainer).compute_loss
    owner = getattr(compute_loss, "__module__", "") or ""
    if not owner.startswith(("transformers.", "trl.")):
        return (f"the program's own compute_loss ({type(trainer).__name__}.compute_loss), which the adapter cannot see "
                f"into: whether its loss can be split is not known")
    return None


def _scaled_by_items(trainer, num_items: Any) -> bool:
    """Whether the Trainer leaves the loss as it comes, already divided by `num_items_in_batch` (its own test)."""
    fixed = getattr(trainer, "loss_is_scaled_for_ga", None)
    if fixed is not None:
        return bool(fixed)
    return bool((getattr(trainer, "model_accepts_loss_kwargs", False) and num_items is not None)
                or getattr(trainer, "compute_loss_func", None) is not None)


def _split(trainer, original, model, inputs, rows: int, pieces: int, num_items: Any, args: tuple, kwargs: dict):
    parts = chunks.chunks(inputs, rows, pieces)
    weights = [1.0] * len(parts) if _scaled_by_items(trainer, num_items) else weights_of(trainer, parts, rows)
    total = None
    for part, weight in zip(parts, weights):
        with _loss_times(trainer, weight):
            loss = original(trainer, model, part, *args, **kwargs)
        total = loss if total is None else total + loss
    return total


def weights_of(trainer, parts: list[dict[str, Any]], rows: int) -> list[float]:
    """Each chunk's share of a mean loss: of the labelled tokens (the labels shifted as the Trainer counts
    them), or of the rows where there are no labels to count."""
    import torch
    shift = bool(getattr(trainer, "_loss_shifts_labels", True))
    counts = []
    for part in parts:
        labels = part.get("labels")
        if not torch.is_tensor(labels):
            counts = []
            break
        counted = labels[..., 1:] if shift and labels.dim() >= 2 else labels
        counts.append(int(counted.ne(-100).sum()))
    if counts and sum(counts) > 0:
        return [c / sum(counts) for c in counts]
    sizes = [_rows(part, rows) for part in parts]
    return [s / sum(sizes) for s in sizes]


def _rows(part: dict[str, Any], rows: int) -> int:
    import torch
    return next((int(v.shape[0]) for v in part.values() if torch.is_tensor(v) and v.dim() >= 1), rows)


@contextlib.contextmanager
def _loss_times(trainer, weight: float):
    """The Trainer's `compute_loss`, its loss multiplied by `weight`, for one chunk."""
    if weight == 1.0:
        yield
        return
    had = "compute_loss" in vars(trainer)
    previous = trainer.compute_loss

    def compute_loss(*a, **k):
        out = previous(*a, **k)
        if isinstance(out, tuple):
            return (out[0] * weight, *out[1:])
        return out * weight

    trainer.compute_loss = compute_loss
    try:
        yield
    finally:
        if had:
            trainer.compute_loss = previous
        else:
            del trainer.compute_loss
