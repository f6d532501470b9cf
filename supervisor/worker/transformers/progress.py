"""What the Trainer adapter (trainer.py) hears at each step, through a callback the Trainer gets first: each
finished optimizer step reported to the supervisor (with what split ahead did in it), the state an emergency
checkpoint must hold kept at each step's end, a stop asked for carried out at a step boundary, and the program's
own trackers told of each attempt and each OOM recovered in place."""

from __future__ import annotations

import os
import signal
import sys

from oomladder.worker.common import safely
from oomladder.worker.hooks import memcap
from oomladder.worker.protocol import files, probe
from oomladder.worker.recovery import ahead, emergency
from oomladder.worker.state import STATE
from oomladder.worker.transformers import trackers


def callback(module, trainer):
    """The progress callback for `trainer`, a TrainerCallback of the program's own Transformers."""
    return type("OomLadderProgress", (Progress, module.TrainerCallback), {"__module__": __name__})(trainer)


class Progress:
    """Reports each finished optimizer step (and evaluation) to the supervisor: the methods of the callback, which
    `callback` puts on the TrainerCallback of the Transformers the program imported."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.loss = self.learning_rate = None
        self.trackers_told = True  # until training begins

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:  # logged after on_step_end: report the step again with its loss
            self.loss, self.learning_rate = logs["loss"], logs.get("learning_rate")
            self._report(state, "train")

    def on_train_begin(self, args, state, control, **kwargs):
        # Where this process really starts: the step after it is the first it will execute. The
        # supervisor compares it with the checkpoint it asked for, so a resume that did not happen shows.
        safely(files.append_progress, {"began_at": state.global_step, "max_steps": state.max_steps})
        # The trackers are told at the first step's beginning: this callback runs before theirs, and a
        # tracker's on_train_begin sets it up (TensorBoard's would otherwise open a folder of its own).
        self.trackers_told = False
        # The last attempt died evaluating at this very step: the evaluation is still owed.
        if os.environ.get("OOMLADDER_RESUME_EVAL_AT") == str(state.global_step) and state.global_step:
            self.trainer.evaluate()

    def on_step_end(self, args, state, control, **kwargs):
        safely(emergency.snapshot_rng)
        safely(emergency.keep_step_end, (self.trainer.model,), (state,))
        self._report(state, "train", executed=True)
        safely(trackers.tell_in_place, self.trainer, args, state, control)
        if STATE.stop_requested:
            control.should_training_stop = True  # the last step ends: no next one begins

    def on_step_begin(self, args, state, control, **kwargs):
        # A stop asked for during a step is carried out here, after the program's own callbacks have seen
        # that step's end (its own records included): the step is saved, then the process exits.
        self._stop_if_asked(state)
        if not self.trackers_told:
            self.trackers_told = True
            safely(trackers.tell, self.trainer, args, state, control)

    def on_train_end(self, args, state, control, **kwargs):
        self._stop_if_asked(state)

    def _stop_if_asked(self, state):
        if STATE.stop_requested:
            signum = STATE.stop_requested
            finished_one = bool(emergency.rng_snapshot())
            safely(emergency.save, self.trainer)
            print(f"oomladder: stopped by {signal.Signals(signum).name} " + (
                  f"after step {state.global_step}, which is saved" if finished_one else
                  f"before this attempt finished a step: {emergency.no_step_ended()}"), file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        emergency.optimizer_step(True)

    def on_optimizer_step(self, args, state, control, **kwargs):
        emergency.optimizer_step(False)

    def on_evaluate(self, args, state, control, **kwargs):
        self._report(state, "eval")

    def _report(self, state, phase, executed=False):
        """`executed`: this process has just run optimizer step `state.global_step` (each one once);
        the other reports repeat a step's numbers with its loss or evaluation."""
        peak, measure = memcap.peak()
        safely(files.append_progress, {"step": state.global_step, "max_steps": state.max_steps,
                                        "loss": self.loss, "learning_rate": self.learning_rate,
                                        "phase": phase, "peak": peak, "peak_measure": measure,
                                        "batch_shape": probe.batch_shapes()["largest"],
                                        **({"executed": True, **ahead.take(state.global_step)} if executed
                                           else {})})
