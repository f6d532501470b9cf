"""Fast-forward: a relaunched custom loop runs from its own start through the steps an earlier attempt trained,
without computing them, then loads the checkpoint and trains on.

A loop of the program's own (accelerate's examples, run_clm_no_trainer.py) keeps its progress in its own
variables: a step counter it stops at, an epoch, a learning-rate schedule it steps, a progress bar. Loading the
model, optimizer and scheduler and skipping the data already trained on leaves those at zero, and the program then
runs past its end. Replaying its loop keeps them as a continuous run has them, because it is the program's own code
that advances them. While it replays:

- the models' forward returns a stand-in: a causal LM's output holds the step's loss as the earlier attempt
  logged it, and computes its logits (without gradients) only if the program reads them; any other model runs
  its real forward without gradients;
- the backward and the optimizer step do nothing (accelerate/accelerator.py's wrappers), the scheduler steps as the
  program steps it, and the data is consumed in the program's order;
- nothing the program saves is written (`accelerator.save_state`, `save_model`, `save`, `torch.save`): a
  checkpoint of untrained weights must never replace a good one;
- what it prints, and logs to its trackers through `accelerator.log`, goes to the attempt's fast-forward.log, so
  its own step log shows each step once.

Then accelerate/accelerator.py loads the checkpoint (weights, optimizer, scheduler, RNG) before the next step's data is
used. Files the program writes itself with `open()` during the replay are not held back (docs/frameworks.md,
"accelerate custom loops").
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

LOG = "fast-forward.log"


class FastForward:
    """The replay of `target` optimizer steps, on `models`."""

    def __init__(self, models: list[Any], target: int, losses: list[float]) -> None:
        self.models, self.target, self.losses = models, target, losses
        self.step = 0                   # optimizer steps replayed so far
        self._forwards: list[tuple[Any, Any]] = []
        self._fds: list[tuple[int, int]] = []
        self._torch_save: Any = None

    # --- entering and leaving ---

    def start(self) -> None:
        for model in self.models:
            self._forwards.append((model, model.__dict__.get("forward")))
            model.forward = _stand_in(model, model.forward, self)
        import torch
        self._torch_save = torch.save
        torch.save = _not_saved
        self._quiet()

    def stop(self) -> None:
        self._loud()
        import torch
        if self._torch_save is not None:
            torch.save, self._torch_save = self._torch_save, None
        for model, own in self._forwards:
            if own is None:
                model.__dict__.pop("forward", None)
            else:
                model.forward = own
        self._forwards = []

    def loss(self) -> float:
        """The loss the earlier attempt logged for the step being replayed (0.0 where none was kept)."""
        return float(self.losses[self.step]) if self.step < len(self.losses) else 0.0

    def _quiet(self) -> None:
        """The program's stdout and stderr into the attempt's fast-forward.log, at the descriptors (so native code's
        and tqdm's writes go there too)."""
        folder = os.environ.get("OOMLADDER_ATTEMPT_DIR")
        if not folder:
            return
        print(f"oomladder: fast-forwarding the program through steps 1-{self.target}, trained by an earlier attempt, "
              f"without computing them (its counters, schedule and data order advance as they did); its output "
              f"meanwhile goes to {Path(folder) / LOG}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        fd = os.open(Path(folder) / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for stream in (1, 2):
            self._fds.append((stream, os.dup(stream)))
            os.dup2(fd, stream)
        os.close(fd)

    def _loud(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for stream, saved in self._fds:
            os.dup2(saved, stream)
            os.close(saved)
        self._fds = []


def _stand_in(model, forward, replay: FastForward):
    """The model's forward while replaying: a causal LM's output holds the step's logged loss, and computes its
    logits (without gradients) only if the program reads them; any other model runs its forward without gradients."""
    import torch

    def stand_in(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if _causal(model) and torch.is_tensor(ids):
            loss = torch.tensor(replay.loss(), device=ids.device, requires_grad=True)
            return _replayed_output()(loss=loss, _compute=lambda: _without_grad(forward, args, kwargs))
        return _without_grad(forward, args, kwargs)

    return stand_in


def _without_grad(forward, args, kwargs):
    import torch
    with torch.no_grad():
        return forward(*args, **kwargs)


@functools.cache
def _replayed_output():
    """A causal LM's output whose logits are computed when first read (most loops read only the loss)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    class Replayed(CausalLMOutputWithPast):
        def __init__(self, *args, _compute=None, **kwargs):
            object.__setattr__(self, "_compute", None)
            super().__init__(*args, **kwargs)
            object.__setattr__(self, "_compute", _compute)

        def _real(self):
            compute = object.__getattribute__(self, "_compute")
            if compute is not None:
                object.__setattr__(self, "_compute", None)
                real = compute()
                for name in ("logits", "hidden_states", "attentions"):
                    value = getattr(real, name, None)
                    if value is not None:
                        self[name] = value

        def __getattribute__(self, name):
            if name in ("logits", "hidden_states", "attentions", "to_tuple", "values", "items", "keys"):
                object.__getattribute__(self, "_real")()
            return object.__getattribute__(self, name)

        def __getitem__(self, key):
            if key in ("loss", 0):
                return object.__getattribute__(self, "loss")
            self._real()
            return super().__getitem__(key)

    return Replayed


def _causal(model) -> bool:
    """A Transformers causal LM, under peft's or DistributedDataParallel's wrapper."""
    inner = getattr(model, "module", model)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return getattr(base, "config", None) is not None and type(base).__name__.endswith("ForCausalLM")


def _not_saved(*args: Any, **kwargs: Any) -> None:
    print("oomladder: not saved while fast-forwarding (the weights are not yet the trained ones)", file=sys.stderr)
