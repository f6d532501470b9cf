"""A fault injector for tests/e2e/test_stops.py: with PAUSE_AT=PHASE in its environment, a Trainer worker stops
at that phase of its attempt, says so in a file `paused` in its attempt folder, and waits there for a signal.

On PYTHONPATH after oomladder's own sitecustomize (which chains to this one), so every hook here wraps what the
adapter already patched. Phases, in the order an attempt meets them:

- `start`: transformers.trainer imported, before the model loads (the adapter has no signal handler yet);
- `model-load`: inside `from_pretrained`;
- `resume-load`: inside the Trainer's load of the checkpoint to resume from (the handler is in place);
- `first-step`: training begun (the model and checkpoint loaded), before the first step;
- `step`: inside the first step's forward and backward;
- `optimizer`: inside the first optimizer step;
- `save`: inside the Trainer's own first periodic checkpoint save.

Nothing happens in a process that is not an attempt's worker (the supervisor runs with this path too).
"""

import functools
import os
import sys
import time

PHASE = os.environ.get("PAUSE_AT")
_done = [False]


def pause(phase: str) -> None:
    """Wait here until the adapter's handler has seen a signal (or, before it has one, until the signal ends the
    process): once per process."""
    if phase != PHASE or _done[0]:
        return
    _done[0] = True
    from oomladder.worker.state import STATE
    with open(os.path.join(os.environ["OOMLADDER_ATTEMPT_DIR"], "paused"), "w") as f:
        f.write(phase)
    deadline = time.monotonic() + 120
    while not STATE.stop_requested and time.monotonic() < deadline:
        time.sleep(0.02)


def wrap(owner, name: str, phase: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def paused(*args, **kwargs):
        pause(phase)
        return original(*args, **kwargs)

    setattr(owner, name, paused)


def hook_trainer(module) -> None:
    pause("start")

    class Pauses(module.TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            pause("first-step")

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            pause("optimizer")

    cls = module.Trainer
    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(Pauses())  # after the adapter's own callback: its flags are set when these run

    cls.__init__ = __init__
    wrap(cls, "_load_from_checkpoint", "resume-load")
    wrap(cls, "training_step", "step")
    wrap(cls, "_save_checkpoint", "save")


def hook_modeling(module) -> None:
    original = module.PreTrainedModel.from_pretrained.__func__

    @functools.wraps(original)
    def from_pretrained(klass, *args, **kwargs):
        pause("model-load")
        return original(klass, *args, **kwargs)

    module.PreTrainedModel.from_pretrained = classmethod(from_pretrained)


if PHASE and os.environ.get("OOMLADDER_ATTEMPT_DIR") and "oomladder" in sys.modules:
    from oomladder.worker.hooks.importhook import PostImportFinder

    sys.meta_path.insert(0, PostImportFinder({"transformers.trainer": hook_trainer,
                                              "transformers.modeling_utils": hook_modeling},
                                             lambda hook, module: hook(module)))
