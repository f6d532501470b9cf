"""What every framework adapter shares: the plan it applies, the observations it reports, and the
guard that keeps an adapter failure from taking the user's program down."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from oomladder.worker.hooks import memcap
from oomladder.worker.protocol import files, probe, role
from oomladder.worker.state import STATE, Phase


def plan() -> dict[str, Any]:
    """The settings the supervisor wants this attempt to run with (only those it sets)."""
    return json.loads(os.environ.get("OOMLADDER_PLAN") or "{}")


def tracker_events(step: int, batch: Any, accumulation: Any) -> dict[str, Any] | None:
    """What the program's own tracker is told when an attempt begins at `step`: the attempt and its plan as
    numbers, the rung and its reason as text; None outside oomladder."""
    attempt = os.environ.get("OOMLADDER_ATTEMPT", "")
    if not attempt.isdigit():
        return None
    rung = os.environ.get("OOMLADDER_RUNG") or "start"
    reason = os.environ.get("OOMLADDER_REASON") or "the program's own settings"
    return {"oomladder/attempt": int(attempt), "oomladder/per_device_train_batch_size": batch,
            "oomladder/gradient_accumulation_steps": accumulation,
            "oomladder/rung": f"attempt {int(attempt)} from step {step}: {rung}: {reason}"}


def safely(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # the adapter failing must not take the program down with it
        print(f"oomladder: adapter step {getattr(fn, '__name__', fn)} failed: {exc!r}", file=sys.stderr)
        return None


def observe(plan_fields: dict[str, Any] | None = None, facts: dict[str, Any] | None = None) -> None:
    """Tell the supervisor the program's own settings and facts (the file is rewritten whole). Held back until this
    process trains (protocol/role.py): a launcher parses the same arguments (TRL's CLI builds the SFTConfig it passes
    on)."""
    STATE.observed["plan"].update({k: v for k, v in (plan_fields or {}).items() if v is not None})
    STATE.observed["facts"].update({k: v for k, v in (facts or {}).items() if v is not None})
    if role.trains():
        _write_observed()


def _write_observed() -> None:
    files.write_json(files.path(files.OBSERVED), {**STATE.observed, "memory_cap": memcap.info(), "pid": os.getpid()})


STATE.on_claim.append(_write_observed)


def is_memory_failure(exc: BaseException) -> bool:
    """Out of memory on the device, or a DataLoader worker killed for host memory: the process that
    caught it is whole, and so are its weights between steps."""
    from oomladder.classify import Evidence, classify
    capped = memcap.cpu_capped()
    record = {"exc_type": type(exc).__name__, "message": str(exc)}
    return classify(Evidence(returncode=1, record=record, capped=capped)).is_memory


def peer_died(exc: BaseException) -> bool:
    from oomladder.classify import peer_died as text_says_peer_died
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and text_says_peer_died(str(exc))


def stop_at_step_end_on(*signals: int) -> None:
    """SIGTERM (a scheduler, the supervisor) finishes the step in flight, saves it, and exits 128+signal:
    a pre-empted run loses no step. A second signal acts at once."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in signals:
        previous = signal.getsignal(signum)

        def handler(sig, frame, previous=previous):
            STATE.stop_requested = sig
            signal.signal(sig, previous if callable(previous) else signal.SIG_DFL)

        signal.signal(signum, handler)


def fatal(exc: BaseException) -> None:
    """`exc` is about to end the program (or, in a notebook's kernel, the cell that trains): its failure record,
    then the adapters' last saves. Nothing from a launcher, whose exception repeats its rank's death
    (protocol/role.py)."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)) or role.is_launcher():
        return
    peak, measure = memcap.peak() if role.trains() else (None, None)
    safely(files.write_failure, exc, phase=STATE.phase, peak=peak, peak_measure=measure,
           step=STATE.step, max_steps=STATE.max_steps,
           batch_shape=probe.batch_shapes()["current"])
    for handler in STATE.on_fatal:
        safely(handler, exc)


def record_failure(exc: BaseException, phase: Phase, **context: Any) -> None:
    """The failure record, written where the exception passes (the first record of a process wins): the
    phase it was raised in is known here, not later in the excepthook. A launcher's is its rank's (protocol/role.py)."""
    if role.is_launcher():
        return
    peak, measure = memcap.peak()
    files.write_failure(exc, phase=phase, peak=peak, peak_measure=measure, **{"step": None, **context})


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """The model loads or moves to the device inside: the phase is "load", and a failure is recorded as the load's
    (a load that runs out of memory can still be answered by the rungs that change the load)."""
    with STATE.phase_is(Phase.LOAD):
        try:
            yield
        except BaseException as exc:
            safely(record_failure, exc, Phase.LOAD)
            raise
