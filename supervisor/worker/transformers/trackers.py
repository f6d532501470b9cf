"""oomladder's events in a Trainer program's own experiment trackers (`report_to`: TensorBoard, W&B, MLflow...):
which attempt this is and why, and each OOM recovered in place, through the Trainer's own `on_log`."""

from __future__ import annotations

from oomladder.worker import common
from oomladder.worker.state import STATE


def recovered_in_place(trainer) -> None:
    """The micro-step just recovered in place: told at its step's end (`tell_in_place`)."""
    trainer._oomladder_in_place = {"oomladder/in_place_split": STATE.split, "oomladder/rung": (
        f"in place at step {trainer.state.global_step + 1}: out of memory; the micro-batch now runs in "
        f"{STATE.split} chunks" + (", gradient checkpointing on" if STATE.checkpointed else ""))}


def tell_in_place(trainer, args, state, control) -> None:
    """An OOM recovered in place, in the program's own trackers, as a relaunch's rung is: at the step's end."""
    events = trainer.__dict__.pop("_oomladder_in_place", None)
    if args.report_to and events is not None and common.tracker_events(state.global_step, None, None) is not None:
        should_log = control.should_log  # the handler's on_log clears it: the step's own log must still happen
        trainer.callback_handler.on_log(args, state, control, events)
        control.should_log = should_log


def tell(trainer, args, state, control) -> None:
    """oomladder's events in the program's own run of TensorBoard, W&B, MLflow...: the attempt number and the
    plan's batch and accumulation as scalars at the step this attempt begins from (where they changed), and the
    rung with its reason as text. Through the Trainer's own on_log, so every tracker it set up gets them, as
    each gets the loss (MLflow keeps numbers only, and drops the text with a warning of its own)."""
    events = common.tracker_events(state.global_step, args.per_device_train_batch_size,
                                   args.gradient_accumulation_steps)
    if args.report_to and events is not None:
        trainer.callback_handler.on_log(args, state, control, events)
