"""The Hugging Face Trainer's side of in-place recovery (in_place.py), and so TRL's: the micro-step is
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

The Trainer's own numbers count the step once: a try that ran out of memory is undone (the buffers its forward
wrote, TRL's token count and metric lists), and the chunks' metrics are merged into the one entry the unsplit
micro-batch logs, each chunk weighted by its share of the labelled tokens.

It steps aside (the supervisor relaunches, and the journal says why) for several processes (a split on one
rank would add collectives the others never join), DeepSpeed, a `compute_loss` or `compute_loss_func` of the
program's own, which may not scale as the Trainer's does, batch normalization in training mode and packed
sequences (step_state.coupled_rows, chunks.packed).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from typing import Any

from oomladder.worker import common
from oomladder.worker.common import is_memory_failure, safely
from oomladder.worker.recovery import ahead, chunks, step_memory, step_state
from oomladder.worker.recovery.in_place import Step, recover
from oomladder.worker.state import STATE


def training_step(trainer, original, model, inputs, args: tuple, kwargs: dict) -> Any:
    num_items = args[0] if args else kwargs.get("num_items_in_batch")
    where = safely(_step_of, trainer, inputs, num_items)
    if where is None:
        return original(trainer, model, inputs, *args, **kwargs)

    def run(pieces: int):
        if pieces == 1:
            return original(trainer, model, inputs, *args, **kwargs)
        return _split(trainer, original, model, inputs, where.rows, pieces, num_items, args, kwargs)

    return recover(run, step_state.trainable(model), where, is_memory_failure)


def _step_of(trainer, inputs, num_items: Any) -> Step:
    targs = trainer.args
    rows, no_rows = chunks.batch_rows(inputs)
    if _scaled_by_items(trainer, num_items) is None:
        no_rows = (f"the model ({type(trainer.model).__name__}) takes the step's token count but has no loss function "
                   f"to tell whether it divides by it: whether its loss can be split is not known")
    return Step(step=trainer.state.global_step + 1, rows=rows, seq=chunks.seq_len(inputs),
                        batch=targs.per_device_train_batch_size, accumulation=targs.gradient_accumulation_steps,
                        refuse=_refuse(trainer) or (no_rows and (chunks.packed(inputs) or no_rows)),
                        checkpoint=functools.partial(_checkpointing, trainer),
                        exact=lambda: step_state.coupled_rows(trainer.model) or chunks.packed(inputs),
                        keep=lambda: [step_state.Buffers(trainer.model), step_state.Counters(trainer, trainer.state)],
                        memory=_memory(trainer) if rows and step_memory.enabled() else None,
                        shapes=_shapes(trainer, inputs, rows) if rows else None)


def _memory(trainer) -> step_memory.StepMemory:
    """The process's model of a step's memory, for the plan the Trainer now runs (checkpointing turned on in place
    starts a new one)."""
    args = trainer.args
    report = STATE.observed.get("model")
    plan = {**common.plan(), "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
            "gradient_checkpointing": bool(args.gradient_checkpointing),
            "optim": str(getattr(args.optim, "value", args.optim))}
    key = (tuple(sorted((k, str(v)) for k, v in plan.items())), id(report))
    return ahead.memory(key, lambda: step_memory.model_of(report, plan, (report or {}).get("trainer")))


def _shapes(trainer, inputs, rows: int):
    """The largest chunk's (rows, tokens per row) when the micro-batch runs in n chunks, trimmed as they run."""
    config = getattr(trainer.model, "config", None)
    aligned = not getattr(config, "is_encoder_decoder", False)
    width = chunks.seq_len(inputs) or 1
    known: dict[int, tuple[int, int]] = {}

    def shapes(pieces: int) -> tuple[int, int]:
        if pieces not in known:
            if pieces <= 1:
                known[pieces] = (rows, width)
            else:
                parts = chunks.chunks(inputs, rows, pieces, labels_aligned=aligned)
                known[pieces] = (max(chunks.batch_rows(p)[0] or 1 for p in parts),
                                 max(chunks.seq_len(p) or 1 for p in parts))
        return known[pieces]

    return shapes


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
    given = getattr(trainer, "compute_loss_func", None)
    if given is not None and not (getattr(given, "__module__", "") or "").startswith(("transformers.", "trl.")):
        return (f"the program's own compute_loss_func ({getattr(given, '__qualname__', type(given).__name__)}), which "
                f"the adapter cannot see into: whether its loss can be split is not known")
    return None


def _scaled_by_items(trainer, num_items: Any) -> bool | None:
    """Whether each chunk's loss is its part of the micro-batch's (a sum over the step's tokens divided by their
    count, `num_items_in_batch`, the same for every chunk) rather than a mean over the chunk's own tokens or rows;
    None where that is not known.

    The Trainer's own rule (`loss_is_scaled_for_ga`) says what it assumes, not what the model does: a sequence
    classifier or T5 accepts loss kwargs and still takes the mean. So for the Trainer's own compute_loss the
    model's forward is read."""
    if num_items is None:
        return False  # no count to divide by: every loss is a mean of its own
    fixed = getattr(trainer, "loss_is_scaled_for_ga", None)
    if fixed is not None:
        return bool(fixed)
    if getattr(trainer, "compute_loss_func", None) is not None or getattr(trainer, "label_smoother", None) is not None:
        return True  # Transformers' and TRL's own (the program's own compute_loss_func is refused) divide by the count
    from transformers import Trainer
    if type(trainer).compute_loss is not Trainer.compute_loss:
        # TRL's SFTTrainer divides its token sum by the count it is given; other subclasses' losses are not known.
        owner = next((c for c in type(trainer).__mro__ if "compute_loss" in vars(c)), None)
        return True if owner is not None and owner.__name__ == "SFTTrainer" else None
    if not getattr(trainer, "model_accepts_loss_kwargs", False):
        return False  # the model never sees the count
    model = trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    calls = _forward_loss(base.__class__)
    if calls != "loss_function":
        return False if calls == "own" else None
    try:
        return "num_items_in_batch" in inspect.signature(base.loss_function).parameters
    except (TypeError, ValueError, AttributeError):
        return None


@functools.cache
def _forward_loss(model_class: Any) -> str | None:
    """How a model's forward computes its loss: "loss_function" (Transformers' causal and masked LMs, sequence
    classifiers: the function says whether it divides by `num_items_in_batch`), "own" (a `CrossEntropyLoss` of
    its own, a mean: T5, Bart), or None, not known."""
    try:
        source = inspect.getsource(model_class.forward)
    except (OSError, TypeError):
        return None
    if "self.loss_function(" in source:
        return "loss_function"
    return "own" if "CrossEntropyLoss" in source or "cross_entropy" in source else None


def _split(trainer, original, model, inputs, rows: int, pieces: int, num_items: Any, args: tuple, kwargs: dict):
    config = getattr(trainer.model, "config", None)
    parts = chunks.chunks(inputs, rows, pieces, labels_aligned=not getattr(config, "is_encoder_decoder", False))
    shares = weights_of(trainer, parts, rows, shift=not getattr(config, "is_encoder_decoder", False))
    weights = [1.0] * len(parts) if _scaled_by_items(trainer, num_items) else shares
    counters = step_state.Counters(trainer)
    total = None
    for part, weight in zip(parts, weights):
        with _loss_times(trainer, weight):
            loss = original(trainer, model, part, *args, **kwargs)
        total = loss if total is None else total + loss
    counters.merge(shares)  # the chunks' metrics, one entry as the unsplit micro-batch logs it
    return total


def weights_of(trainer, parts: list[dict[str, Any]], rows: int, shift: bool = True) -> list[float]:
    """Each chunk's share of a mean loss: of the labelled tokens (shifted, as a causal model's loss counts them;
    an encoder-decoder's labels are the decoder's targets as they are), or of the rows where there are no labels."""
    import torch
    counts: list[Any] = []
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
