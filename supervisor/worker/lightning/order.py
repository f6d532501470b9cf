"""Where a resumed Lightning epoch starts, and in what order: the pure parts of `trainer.py`'s resume.

Lightning counts an epoch's position in micro-batches and restarts a plain DataLoader from the epoch's
first sample. After an OOM the next attempt trains on smaller micro-batches, so the count is recounted in
the new micro-batches (the same samples), and the train DataLoader's sampler is wrapped so that the epoch
draws the order it drew before and starts after the samples already trained. Indices are skipped, not
batches loaded: a resume late in a long epoch costs nothing.
"""

from __future__ import annotations

import itertools
from typing import Any

_COUNTERS = ("ready", "started", "processed", "completed")


def batches_on_new_plan(batches: int, old_batch: int, new_batch: int) -> int | None:
    """The `batches` micro-batches of `old_batch` samples counted in micro-batches of `new_batch`; None when
    they are not a whole number of them."""
    samples = batches * old_batch
    return samples // new_batch if samples % new_batch == 0 else None


def shift_batch_progress(progress: dict[str, Any], delta: int) -> None:
    """Move Lightning's `_BatchProgress` state (`epoch_loop.batch_progress` in a checkpoint's loops) by `delta`
    micro-batches. Every counter moves alike, so the relations between them that tell Lightning where in a
    batch the checkpoint was saved stay as they were."""
    for scope in ("total", "current"):
        for counter in _COUNTERS:
            progress[scope][counter] += delta


class SampleOrder:
    """A sampler, as the train DataLoader's BatchSampler iterates it, that records the random state its epoch's
    order is drawn from and, once, draws it again from a recorded state and skips the samples already trained.

    `RandomSampler` draws its seed from torch's global generator, or from its own `generator`, when the epoch's
    iteration starts; a resumed attempt reaches that moment with other random states. Sequential and
    distributed samplers draw nothing, and the recorded state changes nothing for them.
    """

    def __init__(self, sampler) -> None:
        self.sampler = sampler
        self.drawn_from: dict[str, Any] | None = None  # the random states this epoch's order came from
        self._resume: tuple[dict[str, Any] | None, int] | None = None

    def resume(self, drawn_from: dict[str, Any] | None, skip: int) -> None:
        """The next epoch draws its order from `drawn_from` (None: as it comes) and starts `skip` samples in."""
        self._resume = (drawn_from, skip) if drawn_from is not None or skip else None

    def __len__(self) -> int:
        return len(self.sampler)  # the whole epoch: Lightning counts the skipped batches as already fetched

    def __getattr__(self, name: str) -> Any:
        if name == "sampler":  # not set yet (a copy being built): never recurse
            raise AttributeError(name)
        return getattr(self.sampler, name)  # set_epoch, generator, ...

    def __iter__(self):
        import torch
        resume, self._resume = self._resume, None
        drawn_from, skip = resume or (None, 0)
        generator = getattr(self.sampler, "generator", None)
        generator = generator if isinstance(generator, torch.Generator) else None
        outside = torch.get_rng_state()
        if drawn_from is not None:
            torch.set_rng_state(drawn_from["torch"])
            if generator is not None and drawn_from.get("generator") is not None:
                generator.set_state(drawn_from["generator"])
        self.drawn_from = {"torch": torch.get_rng_state(),
                           "generator": generator.get_state() if generator is not None else None}
        indices = iter(self.sampler)
        first = next(indices, None)  # the order is drawn here, from the state just recorded
        if drawn_from is not None:
            torch.set_rng_state(outside)  # the rest of the program's randomness goes on as it was
        if first is None:
            return
        yield from itertools.islice(itertools.chain((first,), indices), skip, None)
