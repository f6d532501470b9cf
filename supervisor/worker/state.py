"""The worker's state: everything the adapter remembers in a training process, on one object, `STATE`.

The adapter's pieces (the framework adapters, in-place recovery, the emergency checkpoint, the file protocol) are
called from hooks in the program's own code, so what they remember between calls cannot live in a caller's frame.
It lives here, documented field by field, as tenacity keeps a call's state on `RetryCallState`: one place to read
what a process knows, and one place (`new_attempt`) that says what a second attempt in the same process forgets.

Standard library and oomladder's vocabulary only: this is imported in every Python process of the worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from oomladder.status import TextEnum


class Phase(TextEnum):
    """What the process is doing when it fails: the failure record's `phase`, as the classifier reads it."""

    TRAIN = "train"  # a training step (the default: most of a process's life)
    LOAD = "load"    # from_pretrained, the Trainer's __init__, accelerate's prepare: the model moves to the device
    EVAL = "eval"    # an evaluation


@dataclass
class AccelerateLoop:
    """A custom loop on Hugging Face accelerate, as the accelerate adapter follows it (worker/accelerate/)."""

    accelerator: Any = None       # the program's Accelerator (the first built outside a Trainer), once it exists
    step: int = 0                 # optimizer steps finished, fast-forwarded ones included
    micro: int = 0                # micro-batches counted in this optimizer step, where no accumulate() counts them
    began: bool = False           # the training DataLoader's first iteration has begun
    loader: Any = None            # the training DataLoader as passed to prepare (with the plan's batch)
    prepared: Any = None          # the same DataLoader as prepare returned it, which the loop iterates
    in_step: bool = False         # inside the prepared optimizer's step: the weights may be half-updated
    accumulate_seen: bool = False  # the loop enters accelerator.accumulate(): accelerate counts the micro-batches
    replay: Any = None            # the FastForward under way, until the checkpoint is loaded (recovery/fast_forward)
    load_due: bool = False        # the replay reached the checkpoint's step: load it before going on
    resume: str | None = None     # the checkpoint resumed from
    executed: int = 0             # optimizer steps this process computed (not fast-forwarded)
    losses: list[Any] = field(default_factory=list)  # each step's mean loss (None: not known), for a later replay
    loss_sum: Any = None          # this optimizer step's micro-batch losses, summed on their device
    loss_count: int = 0           # how many micro-batch losses loss_sum holds
    rows_told: bool = False       # whether the models' coupled rows were reported (at the first step)


@dataclass
class Ahead:
    """Split ahead's memory (worker/recovery/ahead.py)."""

    memory: Any = None            # the running step's memory model (step_memory.StepMemory), once built
    key: object = None            # what the model was built for (the plan, checkpointing): rebuilt when it changes
    step: dict[str, Any] | None = None  # this optimizer step's record so far: its split, prediction, measurement


@dataclass
class Role:
    """Which process of the worker's tree this is (worker/protocol/role.py)."""

    pid: int | None = None        # this process, as role.install saw it (a forked copy has another pid)
    ancestors: tuple[int, ...] = ()  # the Python processes above it that loaded the adapter
    trains: bool = False          # it trains: the cap, the reports and the failure record are its own
    launcher: bool = False        # it only launched the training, which runs in a process below it


@dataclass
class WorkerState:
    """What the adapter remembers in this process, field by field."""

    # --- the run as the supervisor sees it ---
    phase: Phase = Phase.TRAIN    # what the process does now: the failure record's phase
    stop_requested: int = 0       # the signal (SIGTERM, SIGINT) that asked for a stop at the next step's end; 0: none
    owner: str | None = None      # the framework adapter that took the training loop ("transformers.Trainer", ...):
    #                               the Trainer builds its own Accelerator, and the accelerate adapter then stands aside
    step: int | None = None       # where an adapter that sees the steps (accelerate, the public API) says training is,
    max_steps: int | None = None  # for the failure record written when the program dies outside an adapter's handler
    observed: dict[str, Any] = field(default_factory=lambda: {"plan": {}, "facts": {}})  # what observed.R.json says:
    #                               the program's own settings and facts, and the model's shape and load ("model",
    #                               "load") for the estimator
    reporting: bool = True        # whether this process writes to the attempt folder (protocol/files.py): its leader
    #                               or a rank does; a helper the program spawns inherits the adapter but not the say
    installed: bool = False       # the adapter's hooks are in place (a notebook's kernel may start a second run)

    # --- in-place recovery (recovery/in_place.py) ---
    split: int = 1                # the split the run goes on with after a recovered step (1: none)
    checkpointed: bool = False    # gradient checkpointing turned on in place; the run goes on with it

    # --- the emergency checkpoint (recovery/emergency.py) ---
    rng: dict[str, Any] = field(default_factory=dict)  # the RNG states the last finished step left (python, cpu, ...)
    step_end: list[Any] = field(default_factory=list)  # step_state snapshots at the last step's end: buffers, counters
    in_optimizer_step: bool = False  # inside the Trainer's optimizer step: the weights may be half-updated
    resumed: bool = False         # the supervisor's resume point was taken (Lightning: it is for the first fit only)

    # --- what the estimator reads (protocol/probe.py, hooks/memcap.py, recovery/step_state.py) ---
    batch_now: tuple[int, int] | None = None      # (micro-batch, sequence length) of the step about to run
    batch_largest: tuple[int, int] | None = None  # the largest of them yet
    memory_cap: dict[str, int | str] = field(default_factory=dict)  # how --memory-cap was applied (memcap.info)
    peak_before_reset: dict[str, int] = field(default_factory=lambda: {"cuda": 0, "rss": 0})  # the high-water
    #                               marks before memcap.step_begin reset them: the attempt's peak, not the step's
    trainable_sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # a model's (trainable, all) weight
    #                               bytes, by its first trainable parameter's id: whether a gradient copy is cheap

    # --- the parts with more than a field ---
    role: Role = field(default_factory=Role)
    ahead: Ahead = field(default_factory=Ahead)
    accelerate: AccelerateLoop = field(default_factory=AccelerateLoop)

    # --- what runs when: registered once, when a module loads, and kept across attempts ---
    on_fatal: list[Callable[[BaseException], None]] = field(default_factory=list)  # with the exception about to end
    #                               the program, after its failure record: an adapter's last save
    on_claim: list[Callable[[], None]] = field(default_factory=list)  # once the process trains: what it held back

    @contextlib.contextmanager
    def phase_is(self, phase: Phase) -> Iterator[None]:
        """`phase` for the code inside, then the phase it interrupted (a load inside an evaluation, say)."""
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous

    def new_attempt(self) -> None:
        """Another attempt in this same process (a notebook's kernel): what the last attempt's training left is not
        the next one's. Its plan already holds an in-place split."""
        self.split, self.checkpointed = 1, False
        self.stop_requested = 0
        self.step = self.max_steps = None


STATE = WorkerState()
