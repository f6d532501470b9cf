"""An accelerate loop's progress and what a relaunch resumes from (the other half of accelerator.py): each optimizer
step the prepared optimizer takes is reported with its loss; after an out-of-memory error (or on SIGTERM) the last
finished step is saved with accelerate's own `save_state`; and a relaunched loop is fast-forwarded through the
steps an earlier attempt trained (recovery/fast_forward.py), then loads that checkpoint before the next step's data is
used.
"""

from __future__ import annotations

import atexit
import signal
import sys
from pathlib import Path

from oomladder.worker import common
from oomladder.worker.common import observe, safely
from oomladder.worker.hooks import memcap
from oomladder.worker.protocol import files, probe
from oomladder.worker.recovery import emergency, fast_forward, step_state
from oomladder.worker.state import STATE


def begin() -> None:
    """On the training DataLoader's first iteration: with a checkpoint to resume from, fast-forward the program
    through the steps it holds; otherwise say that training begins at step 0."""
    loop = STATE.accelerate
    if loop.began:
        return
    loop.began = True
    accelerator = loop.accelerator
    resume = emergency.resume_point()
    marker = (files.read_json(Path(resume) / files.CHECKPOINT_MARKER) or {}) if resume else {}
    step = int(marker.get("step", 0) or 0)
    if resume and accelerator is not None and step > 0:
        loop.resume, loop.losses = resume, [float(x) for x in marker.get("losses") or []]
        loop.replay = fast_forward.FastForward(list(accelerator._models), step, loop.losses)
        loop.replay.start()
        atexit.register(replay_unfinished)
        return  # where training begins is said when the checkpoint is loaded
    STATE.step = loop.step
    files.append_progress({"began_at": loop.step, "max_steps": None})


def replayed() -> None:
    """An optimizer step of the fast-forward: counted, not taken. A stop asked for now keeps the checkpoint."""
    loop = STATE.accelerate
    replay = loop.replay
    replay.step += 1
    loop.step = replay.step
    STATE.step = loop.step
    if STATE.stop_requested:
        signum = STATE.stop_requested
        replay.stop()
        print(f"oomladder: stopped by {signal.Signals(signum).name} while fast-forwarding; the checkpoint of step "
              f"{replay.target} stays the latest", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)
    if replay.step >= replay.target:
        loop.load_due = True


def replay_unfinished() -> None:
    """At exit: a program whose loop ended before the fast-forward reached the checkpoint did not resume (its loop
    is not the one that trained the checkpoint, or stops earlier): said, never counted as steps run once."""
    replay = STATE.accelerate.replay
    if replay is None:
        return
    replay.stop()
    why = (f"the program's loop ended after {replay.step} of the {replay.target} steps it was fast-forwarded through, "
           f"so the checkpoint was never loaded: it must run the same loop over the same data to resume")
    safely(files.append_progress, {"resume_failed": why})
    print(f"oomladder: did not resume: {why}", file=sys.stderr, flush=True)


def load_if_due() -> None:
    """The replay reached the checkpoint's step: load the checkpoint (weights, optimizer, scheduler, RNG) and train
    on from there."""
    loop = STATE.accelerate
    if not loop.load_due:
        return
    loop.load_due = False
    replay, loop.replay = loop.replay, None
    replay.stop()
    accelerator = loop.accelerator
    accelerator.load_state(loop.resume)
    # accumulate() decides sync_gradients from the accelerator's own micro-batch count, which load_state
    # restored as the earlier plan counted it (and past the failed micro-batch): count as this plan does.
    accelerator.step = loop.step * accelerator.gradient_accumulation_steps
    loop.micro = 0
    emergency.snapshot_rng()
    emergency.keep_step_end(tuple(accelerator._models))
    STATE.step = loop.step
    files.append_progress({"began_at": loop.step, "max_steps": None})
    print(f"oomladder: fast-forwarded through steps 1-{replay.target}; the checkpoint of step {replay.target} is "
          f"loaded, and training goes on at step {replay.target + 1}", file=sys.stderr, flush=True)


def note_loss(loss) -> None:
    """Each micro-batch's loss, summed on its device (read once per optimizer step)."""
    loop = STATE.accelerate
    value = loss.detach().float()
    loop.loss_sum = value if loop.loss_sum is None else loop.loss_sum + value
    loop.loss_count += 1


def stepped() -> None:
    """After each optimizer step the prepared optimizer really took."""
    loop = STATE.accelerate
    if not loop.rows_told:  # this process's first step: the models are in training mode now
        loop.rows_told = True
        observe(None, {"coupled_rows": next(filter(None, map(step_state.coupled_rows, loop.accelerator._models)),
                                            None)})
    loop.step += 1
    loop.executed += 1
    loop.micro = 0
    loss = float(loop.loss_sum) / loop.loss_count if loop.loss_count else None
    loop.loss_sum, loop.loss_count = None, 0
    before = loop.losses[:loop.step - 1]
    loop.losses = before + [None] * (loop.step - 1 - len(before)) + [loss]
    STATE.step = loop.step
    emergency.snapshot_rng()
    emergency.keep_step_end(tuple(loop.accelerator._models))
    peak, measure = memcap.peak()
    files.append_progress({"step": loop.step, "max_steps": None, "phase": "train", "peak": peak, "loss": loss,
                           "peak_measure": measure, "batch_shape": probe.batch_shapes()["largest"], "executed": True})
    if STATE.stop_requested:
        signum = STATE.stop_requested
        save("stopped")
        print(f"oomladder: stopped by {signal.Signals(signum).name} after step {loop.step}, which is saved",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)


def save_after_failure(exc: BaseException) -> None:
    """From the excepthook: the last finished step, after an out-of-memory error outside the optimizer step."""
    loop = STATE.accelerate
    if loop.accelerator is None or not common.is_memory_failure(exc):
        return
    if loop.replay is not None or (loop.resume and not loop.executed):
        emergency.skip(emergency.no_step_ended())
        return
    if (why := emergency.nothing_to_keep(loop.step, loop.in_step)) is not None:
        emergency.skip(why)
        return
    emergency.free_failed_step(exc, *loop.accelerator._models)
    if (why := emergency.back_to_step_end()) is not None:
        emergency.skip(why)
        return
    save("oom")


def save(why: str) -> None:
    loop = STATE.accelerate
    accelerator = loop.accelerator
    if not accelerator.is_main_process:
        return
    import torch
    try:
        partial = emergency.begin(loop.step, sum(emergency.state_bytes(m, o) for m, o in
                                                    zip(accelerator._models, accelerator._optimizers or [None])))
    except emergency.NoRoom as exc:
        emergency.skip(str(exc))
        return
    automatic = accelerator.project_configuration.automatic_checkpoint_naming
    accelerator.project_configuration.automatic_checkpoint_naming = False  # never the program's own folder
    try:
        accelerator.save_state(str(partial))
    finally:
        accelerator.project_configuration.automatic_checkpoint_naming = automatic
    rng = emergency.rng_snapshot()
    if rng:  # the RNG as the last step left it, not as the failed step advanced it
        states = torch.load(partial / f"random_states_{accelerator.process_index}.pkl", weights_only=False)
        states.update(random_state=rng["python"], torch_manual_seed=rng["cpu"],
                      **({"numpy_random_seed": rng["numpy"]} if "numpy" in rng else {}),
                      **({"torch_cuda_manual_seed": rng["cuda"] if isinstance(rng["cuda"], list) else [rng["cuda"]]}
                         if "cuda" in rng else {}))
        torch.save(states, partial / f"random_states_{accelerator.process_index}.pkl")
    emergency.commit(partial, loop.step, None, "accelerate", why=why,
                     losses=[x if x is not None else 0.0 for x in loop.losses[:loop.step]])
