"""Zero lost work: when an OOM kills step k, save the state at the end of step k-1, and resume
the next attempt from exactly there.

What the checkpoint holds is what an uninterrupted run had between steps k-1 and k: the model
(or its adapters), optimizer, scheduler and scaler as they are (the failed step never reached
the optimizer), the trainer state, and the RNG states snapshotted at the end of step k-1, not
the ones step k had already advanced. The partial gradients of step k are dropped; the next
attempt runs step k whole. Because the effective batch never changes, the data position is exact.

It is written to a `.partial` folder and renamed when complete; the marker file the supervisor
reads is written last, so a half-written checkpoint is never resumed from.
"""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from oomladder.worker.protocol import files
from oomladder.worker.recovery import step_state
from oomladder.worker.state import STATE


def snapshot_rng() -> None:
    """At each step's end: the RNG states the next step starts from."""
    import torch
    rng = STATE.rng
    rng.clear()
    rng.update(python=random.getstate(), cpu=torch.random.get_rng_state())
    try:
        import numpy as np
        rng["numpy"] = np.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.random.get_rng_state_all() if _world() > 1 else torch.cuda.random.get_rng_state()


def keep_step_end(models: tuple[Any, ...] = (), counters: tuple[Any, ...] = ()) -> None:
    """At each step's end, with `snapshot_rng`: the models' buffers and the counters an emergency checkpoint must
    hold as this step left them, not as a failed next step's forward changed them (BatchNorm's running statistics,
    the Trainer's tokens seen, counted per micro-batch)."""
    STATE.step_end[:] = [step_state.Buffers(*models), step_state.Counters(*counters)]


def back_to_step_end() -> str | None:
    """After an OOM, before the emergency checkpoint is written: the buffers and counters as the last finished
    step left them; None, or why they cannot be (the checkpoint is then not written)."""
    return next((why for why in (kept.restore() for kept in STATE.step_end) if why), None)


def rng_snapshot() -> dict[str, Any]:
    """The RNG states the last finished step left (python, cpu, numpy, cuda), as `snapshot_rng` took them."""
    return dict(STATE.rng)


def optimizer_step(inside: bool) -> None:
    STATE.in_optimizer_step = inside


def nothing_to_keep(steps_done: int, in_optimizer_step: bool) -> str | None:
    """Why an OOM leaves no emergency checkpoint, in every adapter, or None: before the first step ended nothing
    is finished, and inside the optimizer step the weights may be half-updated."""
    if steps_done == 0:
        return "the OOM struck in the first step: there is nothing to keep"
    if in_optimizer_step:
        return "the OOM struck inside the optimizer step: the weights may be half-updated"
    return None


def no_step_ended() -> str:
    """Why there is nothing to save when no step ended in this process."""
    if resume_point():
        return "no step ended since the checkpoint this attempt resumed from, which stays the latest"
    return "no step has ended in this process"


def free_failed_step(exc: BaseException, *owners: Any) -> None:
    """Drop what a failed step held: its activations live in the frames of the exception's traceback, its
    gradients in the owners' (models', optimizers') `.grad`, and on CUDA the allocator keeps the freed blocks."""
    traceback.clear_frames(exc.__traceback__)
    for owner in owners:
        if hasattr(owner, "zero_grad"):
            owner.zero_grad(set_to_none=True)
    gc.collect()
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:
        pass


def save_after_oom(trainer, exc: BaseException) -> str | None:
    """The checkpoint of the last completed step, or None with the reason on stderr: after an OOM in
    this process, or in a peer whose death broke the collective this one waited in."""
    if (why := nothing_to_keep(trainer.state.global_step, STATE.in_optimizer_step)) is not None:
        skip(why)
        return None
    if not STATE.rng:
        skip(no_step_ended())
        return None
    free_failed_step(exc, *{id(m): m for m in (trainer.model, getattr(trainer, "model_wrapped", None))
                            if m is not None}.values())
    if (why := back_to_step_end()) is not None:
        skip(why)
        return None
    try:
        return save(trainer)
    except NoRoom as exc:
        skip(str(exc))
        return None


def save(trainer) -> str | None:
    """Write the Trainer's state between two steps (RNG as the last step left it) and mark it whole.

    Under data parallelism every rank holds the same weights and optimizer state, so rank 0 writes
    them alone; the other ranks cannot take part (a peer may be dead), and their RNG is not kept.
    """
    import torch
    if trainer.args.process_index != 0:
        return None
    if not STATE.rng:
        # A stop before this process finished a step (a resumed attempt still loading, or at its first step's
        # start): its RNG is not a step's end, and a checkpoint of it would replace the one resumed from.
        skip(no_step_ended())
        return None
    step = trainer.state.global_step
    partial = begin(step, state_bytes(trainer.model, trainer.optimizer))
    trainer.save_model(str(partial), _internal_call=True)
    trainer._save_optimizer_and_scheduler(str(partial))
    if hasattr(trainer, "_save_scaler"):
        trainer._save_scaler(str(partial))
    rng_name = "rng_state_0.pth" if _world() > 1 else "rng_state.pth"
    torch.save(dict(STATE.rng), partial / rng_name)
    trainer.state.save_to_json(str(partial / "trainer_state.json"))
    if (why := _unloadable(partial / rng_name)) is not None:
        shutil.rmtree(partial, ignore_errors=True)
        skip(f"the checkpoint of step {step} could not be resumed from ({why}); the last one stays")
        return None
    return commit(partial, step, trainer.state.max_steps, "transformers.Trainer")


def _unloadable(rng_file: Path) -> str | None:
    """Why the Trainer could not resume from a checkpoint with this RNG file, or None. Its resume reads the
    states by name: a checkpoint without them would replace a good one and fail every resume with a KeyError."""
    import torch
    states = torch.load(rng_file, weights_only=False)
    missing = {"python", "cpu"} - set(states if isinstance(states, dict) else ())
    return f"its RNG state lacks {', '.join(sorted(missing))}" if missing else None


# --- the protocol every framework's emergency checkpoint follows ----------------------------------------

MARKER = files.CHECKPOINT_MARKER


class NoRoom(Exception):
    """The disk holding the run directory cannot take the checkpoint: it is not begun (a half-written one
    would only fill the disk the journal needs)."""


def begin(step: int, expected_bytes: int | None = None) -> Path:
    """A fresh `.partial` folder in the run's checkpoints/ for the end of `step`: write the state into it,
    then `commit`. `expected_bytes`, what the state will take, is checked against the disk's free space."""
    attempt = os.environ.get("OOMLADDER_ATTEMPT") or Path(os.environ["OOMLADDER_ATTEMPT_DIR"]).name
    target = Path(os.environ["OOMLADDER_RUN_DIR"]) / "checkpoints" / f"{files.EMERGENCY}-step-{step}-attempt-{attempt}"
    partial = target.with_name(target.name + ".partial")
    if expected_bytes:
        free = shutil.disk_usage(target.parent if target.parent.exists() else target.parent.parent).free
        if free < expected_bytes * 1.2 + 16 * 2**20:
            raise NoRoom(f"the disk has {free >> 20} MiB free and the checkpoint needs about "
                         f"{expected_bytes >> 20} MiB")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def commit(partial: Path, step: int, max_steps: int | None, framework: str, **extra: Any) -> str:
    """Mark the checkpoint in `partial` whole: its marker, its files on disk, then its final name, and
    last the note that tells the supervisor. A crash at any point leaves a folder nobody resumes from."""
    files.write_json(partial / MARKER, {"framework": framework, "step": step, "max_steps": max_steps, **extra})
    _fsync_tree(partial)
    target = partial.with_name(partial.name[: -len(".partial")])
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    _fsync_dir(target.parent)
    files.write_json(files.path(files.EMERGENCY), {"path": str(target), "step": step, "max_steps": max_steps})
    return str(target)


def state_bytes(model, optimizer=None) -> int:
    """About what saving a model (its adapters alone, for a peft model) and its optimizer writes to disk."""
    import torch
    adapters = hasattr(model, "peft_config")
    saved = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad or not adapters)
    moments = 0
    for state in (getattr(optimizer, "state", None) or {}).values():
        moments += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    return saved + moments


def is_whole(path: str | Path) -> bool:
    """An emergency checkpoint any adapter committed, or (for the Trainer) a folder with its state."""
    folder = Path(path)
    return folder.is_dir() and not folder.name.endswith(".partial") and (
        (folder / MARKER).is_file() or (folder / "trainer_state.json").is_file())


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resume_point() -> str | None:
    """The checkpoint the supervisor asked this attempt to resume from, if it is whole. One that is not
    is reported (the supervisor journals it and the table shows the steps that then run again)."""
    path = os.environ.get("OOMLADDER_RESUME_FROM")
    if not path or os.environ.get("_OOMLADDER_TEST_SKIP_RESUME"):
        # The test-only switch stands for a broken resume: tests/e2e/test_zero_lost_work.py shows that the
        # suite's step checks and the report catch a worker that trains from scratch.
        return None
    if not is_whole(path):
        why = f"the checkpoint {path} is not whole"
        files.append_progress({"resume_failed": why})
        print(f"oomladder: cannot resume: {why}; this attempt starts from step 0", file=sys.stderr, flush=True)
        return None
    return path


def prepare_resume(path: str, trainer) -> str:
    """The checkpoint to resume from, with a trainer state that agrees with this attempt's plan.

    Transformers before 4.57 restored `train_batch_size` from trainer_state.json on resume, silently
    undoing a smaller micro-batch (transformers issue 43708): the state must say the new batch. An
    emergency checkpoint is oomladder's and is rewritten in place. The program's own `checkpoint-N`
    is never written to: a folder in the attempt's own folder links its files and holds the new state.
    """
    source = Path(path)
    state = json.loads((source / "trainer_state.json").read_text())
    if state.get("train_batch_size") in (None, trainer._train_batch_size):
        return path
    state["train_batch_size"] = trainer._train_batch_size
    ours = source.resolve().is_relative_to((Path(os.environ["OOMLADDER_RUN_DIR"]) / "checkpoints").resolve())
    target = source if ours else Path(os.environ["OOMLADDER_ATTEMPT_DIR"]) / f"resume-{source.name}"
    if not ours:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for entry in source.iterdir():
            if entry.name != "trainer_state.json":
                (target / entry.name).symlink_to(entry.resolve())
    files.write_json(target / "trainer_state.json", state)
    return str(target)


def skip(reason: str) -> None:
    """No emergency checkpoint, and why, on stderr (the attempt's log)."""
    print(f"oomladder: no emergency checkpoint: {reason}", flush=True, file=sys.stderr)


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)
