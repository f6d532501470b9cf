"""The emergency checkpoint of a Lightning fit: `trainer.save_checkpoint` of the state at the end of the
last optimizer step, written through the emergency protocol (a `.partial` folder, then `emergency.commit`).

The weights, optimizer and scheduler are those of that step's end whenever the OOM struck outside the
optimizer step. The loops are not: by the OOM they had counted micro-batches of the failed step, so the
callback (`lightning_callback.py`) puts into the checkpoint the loops it kept at the step's end.
"""

from __future__ import annotations

import gc
import sys
import traceback

from oomladder.worker import emergency

CHECKPOINT_FILE = "lightning.ckpt"  # what `trainer.save_checkpoint` writes into an emergency checkpoint's folder
# Every rank holds the whole model and optimizer: rank 0 can save them alone, without its peers.
_WHOLE_ON_EACH_RANK = ("SingleDeviceStrategy", "DDPStrategy")


def save_after_oom(trainer, ours, exc: BaseException) -> str | None:
    """The checkpoint of the last completed optimizer step, or None with the reason on stderr."""
    import torch
    if trainer.global_step == 0:
        return _skip("the OOM struck in the first step: there is nothing to keep")
    if ours.in_optimizer_step:
        return _skip("the OOM struck inside the optimizer step: the weights may be half-updated")
    if ours.snapshot is None or ours.snapshot["step"] != trainer.global_step:
        if emergency.resume_point():
            return _skip("no step ended since the checkpoint this attempt resumed from, which stays the latest")
        return _skip("no step has ended in this process")
    # Free what the failed step held before writing: its activations live in the traceback's frames.
    traceback.clear_frames(exc.__traceback__)
    trainer.lightning_module.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return save(trainer, ours)


def save(trainer, ours) -> str | None:
    """`trainer.save_checkpoint` of the state at the end of the last optimizer step, written through the
    emergency protocol; the callback puts the loops of that step's end into it.

    Under data parallelism rank 0 writes it alone, without the Trainer's barrier: a peer may be dead.
    """
    if trainer.global_rank != 0:
        return None
    distributed = trainer.world_size > 1
    if distributed and type(trainer.strategy).__name__ not in _WHOLE_ON_EACH_RANK:
        return _skip(f"{type(trainer.strategy).__name__} spreads the state over the ranks, and a peer may be dead")
    step = ours.snapshot["step"]
    partial = emergency.begin(step)
    ours.saving = ours.snapshot
    try:
        if distributed:
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, partial / CHECKPOINT_FILE)
        else:
            trainer.save_checkpoint(partial / CHECKPOINT_FILE)
    finally:
        ours.saving = None
    return emergency.commit(partial, step, ours.max_steps, "lightning", checkpoint=CHECKPOINT_FILE)


def _skip(reason: str) -> None:
    print(f"oomladder: no emergency checkpoint: {reason}", flush=True, file=sys.stderr)
