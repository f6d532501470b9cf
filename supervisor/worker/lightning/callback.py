"""What the Lightning adapter (`trainer.py`) does during fit, through a Callback the Trainer gets: it
sets the plan's batch before the DataLoaders are built, reports each optimizer step, keeps the state at
the end of each step, and writes it as the emergency checkpoint after an OOM or on SIGTERM.

Lightning restarts a mid-epoch checkpoint's data from the epoch's first batch unless the DataLoader
keeps a state of its own (it warns "resuming from a checkpoint that ended before the epoch ended"), and
it counts the epoch's position in micro-batches of the old size. So the adapter keeps the data position
itself. The emergency checkpoint holds the loops as they were at the end of the last optimizer step (not
at the OOM, mid-step), the micro-batch they count in, and the random state the epoch's sample order was
drawn from. The resumed attempt recounts the loops in its own micro-batches, draws the same order, and
starts after the samples already trained (`order.py`).
"""

from __future__ import annotations

import copy
import functools
import importlib
import signal
import sys
import warnings
from typing import Any

from oomladder.worker import common
from oomladder.worker.common import observe, safely, stop_at_step_end_on
from oomladder.worker.hooks import memcap
from oomladder.worker.lightning.checkpoint import save
from oomladder.worker.lightning.order import SampleOrder, batches_on_new_plan, shift_batch_progress
from oomladder.worker.lightning.program import batch_size_of, max_steps, training_facts, transformers_model
from oomladder.worker.protocol import files, probe
from oomladder.worker.recovery import emergency
from oomladder.worker.state import STATE, Phase


@functools.cache
def callback_class(root: str):
    """The callback, as a Callback of the Lightning the program imported (`lightning.pytorch` or
    `pytorch_lightning`), with that Lightning's own helpers."""
    fabric = "lightning.fabric" if root.startswith("lightning.") else "lightning_fabric"
    helpers = {"parsing": importlib.import_module(f"{root}.utilities.parsing"),
               "seed": importlib.import_module(f"{fabric}.utilities.seed"), "__module__": __name__}
    return type("OomLadder", (FitFollower, importlib.import_module(f"{root}.callbacks").Callback), helpers)


class FitFollower:
    """Observes and applies the batch, reports each optimizer step, and keeps the state at its end."""

    parsing: Any  # Lightning's utilities.parsing, whose lightning_hasattr finds the batch size
    seed: Any     # Lightning Fabric's utilities.seed, which collects and sets every random state

    def __init__(self, own: dict[str, Any]) -> None:
        self.own = own  # the program's own Trainer settings (lightning.own_settings)
        self.batch: int | None = None  # the batch the DataLoaders are built with: the plan's, or the program's
        self.loader_batch: int | None = None  # the micro-batch the train DataLoader really yields
        self.observed: set[str] = set()
        self.training = False  # set once Lightning's tuners are done: their trial steps are not training
        self.resuming = False
        self.resume: dict[str, Any] | None = None  # how the resumed epoch goes on: random states, order, what to skip
        self.order: SampleOrder | None = None  # the train DataLoader's sample order
        self.resume_orders: list[SampleOrder] = []
        self.snapshot: dict[str, Any] | None = None  # the state at the end of the last optimizer step this process ran
        self.saving: dict[str, Any] | None = None  # the snapshot an emergency save is writing
        self.last_step = 0
        self.step_ended = False
        self.in_optimizer_step = False
        self.loss: float | None = None
        self.max_steps: int | None = None

    def _observe_once(self, name: str, value: Any) -> None:
        """The program's own value, seen before the plan changes it (a second fit sees the plan's)."""
        if name not in self.observed:
            self.observed.add(name)
            observe({name: value})

    # --- before the DataLoaders exist: the batch, and the model ---

    def setup(self, trainer, pl_module, stage=None):
        if getattr(stage, "value", stage) == "fit":
            safely(self._take_batch, pl_module)

    def _take_batch(self, pl_module) -> None:
        current = batch_size_of(pl_module, self.parsing)
        if current is None:
            if "per_device_train_batch_size" not in self.observed:
                print("oomladder: no `batch_size` on the module or the datamodule, where Lightning's BatchSizeFinder "
                      "looks: the batch stays as the program sets it", file=sys.stderr)
            self.observed.add("per_device_train_batch_size")
            return
        self._observe_once("per_device_train_batch_size", current)
        planned = common.plan().get("per_device_train_batch_size")
        if planned is not None and planned != current:
            self.parsing.lightning_setattr(pl_module, "batch_size", planned)
            current = planned
        self.batch = current

    def on_fit_start(self, trainer, pl_module):
        self.training = True
        safely(self._observe_model, pl_module)

    def _observe_model(self, pl_module) -> None:
        model = transformers_model(pl_module)
        if model is not None:
            STATE.observed["model"] = safely(probe.model_report, model)
            safely(self._checkpointing, model)
        observe(None, training_facts(pl_module))

    def _checkpointing(self, model) -> None:
        """Gradient checkpointing of a Transformers model inside the module (non-reentrant, as for the Trainer)."""
        new = hasattr(model, "activation_checkpointing_enable")  # Transformers 5 renamed it
        on = bool(model.is_activation_checkpointing if new else model.is_gradient_checkpointing)
        self._observe_once("gradient_checkpointing", on)
        wanted = common.plan().get("gradient_checkpointing")
        if wanted and not on:
            if new:
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif wanted is False and on:
            model.activation_checkpointing_disable() if new else model.gradient_checkpointing_disable()

    # --- the train DataLoader, before it is iterated: workers, and the data position of a resumed epoch ---

    def train_loader_ready(self, trainer, loader) -> None:
        from torch.utils.data import BatchSampler, DataLoader
        if not isinstance(loader, DataLoader):
            return
        self._observe_once("dataloader_num_workers", loader.num_workers)
        workers = common.plan().get("dataloader_num_workers")
        if workers is not None and workers != loader.num_workers:
            loader.num_workers = workers  # allowed until it is iterated, unlike its sampler or batch size
        self.loader_batch = loader.batch_size
        if self.batch is not None and loader.batch_size not in (None, self.batch):
            self._batch_not_followed(trainer, loader.batch_size)
        if type(loader.batch_sampler) is not BatchSampler or hasattr(loader, "load_state_dict"):
            return  # a batch sampler of its own, or a DataLoader that restores its own position
        self.order = SampleOrder(loader.batch_sampler.sampler)
        loader.batch_sampler.sampler = self.order
        if self.resuming:
            self.resume_orders.append(self.order)
            self._apply_resume()

    def _batch_not_followed(self, trainer, batch: int) -> None:
        """The program's DataLoader does not read `batch_size`: the plan's micro-batch is not applied, and its
        accumulation alone would change the effective batch."""
        print(f"oomladder: the train DataLoader's batch is {batch}, not its `batch_size` {self.batch}: the "
              f"accumulation stays {self.own['accumulation']}", file=sys.stderr)
        trainer.accumulate_grad_batches = self.own["accumulation"]
        self.batch = batch

    def _apply_resume(self) -> None:
        resume = self.resume
        if resume is None:
            return
        if len(self.resume_orders) > 1 and resume["skip"]:  # one place for DataLoaders cycled together: not kept
            print("oomladder: several train DataLoaders: the resumed epoch starts again from its first batch",
                  file=sys.stderr)
            resume["order"], resume["skip"] = None, 0
        for order in self.resume_orders:
            order.resume(resume["order"], resume["skip"])
        if resume["epoch_ended"] and resume["rng"] is not None:
            # The next epoch draws its order now, as the uninterrupted run drew it: from the random states the
            # last step left.
            self.seed._set_rng_states(resume["rng"])
            resume["rng"] = None

    # --- the emergency checkpoint: written at the last step's end, read back recounted in this plan's batches ---

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        """Only an emergency save changes what is written; the program's own checkpoints are Lightning's."""
        if self.saving is not None:
            snapshot = self.saving
            checkpoint["loops"], checkpoint["global_step"] = snapshot["loops"], snapshot["step"]
            checkpoint["oomladder"] = {key: snapshot[key] for key in ("micro_batch", "accumulation", "order", "rng")}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        if self.resuming and "oomladder" in checkpoint:
            safely(self._place_resume, checkpoint)

    def _place_resume(self, checkpoint) -> None:
        mine = checkpoint["oomladder"]
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        self.resume = {"rng": mine.get("rng"), "order": None, "skip": 0, "epoch_ended": progress["is_last_batch"]}
        done, old = progress["current"]["ready"], mine["micro_batch"]
        new = self.batch if self.batch is not None else old
        now = batches_on_new_plan(done, old, new) if old and new else None
        if now is None:
            why = (f"{done} batches of {old} samples are not a whole number of batches of {new}" if old and new
                   else "the train DataLoader has no batch size to count its samples by")
            print(f"oomladder: {why}: the resumed epoch starts again from its first batch, as Lightning starts it",
                  file=sys.stderr)
            return
        shift_batch_progress(progress, now - done)
        if not progress["is_last_batch"]:  # mid-epoch: the same order, after the samples already trained
            self.resume.update(order=mine.get("order"), skip=now * new)
        self._apply_resume()  # DataLoaders already built (a strategy that restores after its setup)

    # --- training ---

    def on_train_start(self, trainer, pl_module):
        if not self.training:
            return
        # Lightning's own SIGTERM handler would end fit after the micro-batch in flight, mid-accumulation:
        # this one, installed over it, lets the step finish and saves it.
        safely(stop_at_step_end_on, signal.SIGTERM, signal.SIGINT)
        if self.resume is not None:
            safely(self._resumed, self.resume)
        self.resume, self.resuming, self.resume_orders = None, False, []
        self.max_steps = safely(max_steps, trainer)
        self.last_step = trainer.global_step
        # Where this process really starts: the supervisor compares it with the checkpoint it asked for.
        safely(files.append_progress, {"began_at": trainer.global_step, "max_steps": self.max_steps})
        safely(self._tell_loggers, trainer)

    def _tell_loggers(self, trainer) -> None:
        """oomladder's events in the program's own loggers (TensorBoard, W&B, CSV...), as the Trainer adapter tells
        the Trainer's: numbers through `log_metrics` at the step the attempt begins from, and the rung's text where
        the logger's experiment takes text (TensorBoard's `add_text`)."""
        batch = common.plan().get("per_device_train_batch_size") or STATE.observed["plan"].get(
            "per_device_train_batch_size")
        events = common.tracker_events(trainer.global_step, batch, trainer.accumulate_grad_batches)
        if events is None or not trainer.loggers:
            return
        text = events.pop("oomladder/rung")
        numbers = {k: v for k, v in events.items() if v is not None}
        for logger in trainer.loggers:
            safely(logger.log_metrics, numbers, step=trainer.global_step)
            experiment = safely(getattr, logger, "experiment")
            if hasattr(experiment, "add_text"):
                safely(experiment.add_text, "oomladder/rung", text, trainer.global_step)

    def _resumed(self, resume) -> None:
        if resume["rng"] is not None:  # as the last step left them: dropout and the like go on as they would have
            self.seed._set_rng_states(resume["rng"])
        if not resume["skip"]:
            return
        if self.resume_orders:
            print(f"oomladder: the resumed epoch goes on after its first {resume['skip']} samples, in the order "
                  "it drew", file=sys.stderr)
            # Lightning's warning that the epoch starts again from its first batch does not hold here.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        else:
            print("oomladder: the train DataLoader cannot skip samples by index (a batch sampler of its own, an "
                  "iterable dataset, or a DataLoader that restores its own position): the resumed epoch starts "
                  "again from its first batch, as Lightning starts it", file=sys.stderr)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.training:
            self._stop_if_asked(trainer)  # between two steps: the last one is saved, nothing of this one ran
            STATE.phase = Phase.TRAIN
            safely(probe.note_batch, batch)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.training:
            self.in_optimizer_step = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.training:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if hasattr(loss, "detach"):  # each micro-batch's loss, already divided by the accumulation
            self.loss = loss.detach() if self.loss is None else self.loss + loss.detach()
        step = trainer.global_step
        self.step_ended = step != self.last_step
        if not self.step_ended:
            return  # accumulating
        self.in_optimizer_step = False
        safely(self._snapshot, trainer)
        safely(emergency.keep_step_end, (trainer.lightning_module,))
        loss, self.loss = (float(self.loss) if self.loss is not None else None), None
        peak, measure = memcap.peak()
        rate = safely(lambda: trainer.optimizers[0].param_groups[0]["lr"])
        for executed in range(self.last_step + 1, step + 1):  # manual optimization may step more than once
            safely(files.append_progress, {"step": executed, "max_steps": self.max_steps, "loss": loss,
                                            "learning_rate": rate, "phase": "train", "peak": peak,
                                            "peak_measure": measure, "batch_shape": probe.batch_shapes()["largest"],
                                            "executed": True})
        self.last_step = step

    def _snapshot(self, trainer) -> None:
        """What an emergency checkpoint of this step holds beside the weights: the loops as a checkpoint written
        now would hold them, the micro-batch they count in, and the random states."""
        self.snapshot = {"step": trainer.global_step,
                         "loops": copy.deepcopy(trainer._checkpoint_connector._get_loops_state_dict()),
                         "micro_batch": self.loader_batch, "accumulation": trainer.accumulate_grad_batches,
                         "order": self.order.drawn_from if self.order is not None else None,
                         "rng": self.seed._collect_rng_states()}

    def on_validation_start(self, trainer, pl_module):
        if self.training and not trainer.sanity_checking:
            self._stop_if_asked(trainer)
        STATE.phase = Phase.EVAL

    def on_validation_end(self, trainer, pl_module):
        STATE.phase = Phase.TRAIN

    def _stop_if_asked(self, trainer) -> None:
        if not (STATE.stop_requested and self.step_ended and self.snapshot is not None):
            return
        signum = STATE.stop_requested
        safely(save, trainer, self)
        print(f"oomladder: stopped by {signal.Signals(signum).name} after step {self.snapshot['step']}, "
              f"which is saved", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)
