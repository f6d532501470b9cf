"""The emergency checkpoint of a Lightning fit: `trainer.save_checkpoint` of the state at the end of the
last optimizer step, written through the emergency protocol (a `.partial` folder, then `emergency.commit`).

The weights, optimizer and scheduler are those of that step's end whenever the OOM struck outside the
optimizer step. The loops are not: by the OOM they had counted micro-batches of the failed step, so the
callback (`callback.py`) puts into the checkpoint the loops it kept at the step's end.
"""

from __future__ import annotations

from oomladder.worker.recovery import emergency

CHECKPOINT_FILE = "lightning.ckpt"  # what `trainer.save_checkpoint` writes into an emergency checkpoint's folder
# Every rank holds the whole model and optimizer: rank 0 can save them alone, without its peers.
_WHOLE_ON_EACH_RANK = ("SingleDeviceStrategy", "DDPStrategy")


def save_after_oom(trainer, ours, exc: BaseException) -> str | None:
    """The checkpoint of the last completed optimizer step, or None with the reason on stderr."""
    if (why := emergency.nothing_to_keep(trainer.global_step, ours.in_optimizer_step)) is not None:
        emergency.skip(why)
        return None
    if ours.snapshot is None or ours.snapshot["step"] != trainer.global_step:
        emergency.skip(emergency.no_step_ended())
        return None
    emergency.free_failed_step(exc, trainer.lightning_module)
    if (why := emergency.back_to_step_end()) is not None:
        emergency.skip(why)
        return None
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
        emergency.skip(f"{type(trainer.strategy).__name__} spreads the state over the ranks, and a peer may be dead")
        return None
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
