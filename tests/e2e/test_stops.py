"""A stop signal (Ctrl-C, or a cluster's pre-emption SIGTERM) at any phase of a resumed attempt: the run resumes,
and every step runs once. A checkpoint replaces the one resumed from only when it is whole and loadable; a stop
before the attempt finished a step saves nothing (a checkpoint of it would hold no RNG state, and every later
resume would fail with `KeyError: 'python'`).

One run directory per signal, stopped again and again: each `resume` pauses its worker at the next phase
(tests/e2e/programs/pause/sitecustomize.py), the signal goes to the supervisor, and the next `resume` must carry
on from the last good checkpoint. The phases cost one short attempt each, on a model of a few kilobytes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import oomladder_argv, processes_of
from tests.e2e.ledger import assert_each_step_ran_once, steps_by_process
from tests.e2e.test_recovery import TRAIN_TINY, oomladder, view_of

pytestmark = pytest.mark.e2e
PAUSE = Path(__file__).resolve().parent / "programs" / "pause"
TINY = ("--vocab", "256", "--hidden", "32", "--intermediate", "64", "--layers", "1", "--heads", "2",
        "--short-len", "16", "--long-len", "16", "--batch-size", "2", "--save-steps", "1")
# In the order an attempt meets them; `step`, `optimizer` and `save` each let the attempt finish one step.
PHASES = ("start", "model-load", "resume-load", "first-step", "step", "optimizer", "save")
MAX_STEPS = 5
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def stopped_at(phase, argv, run_dir, env, signum):
    """Run `argv` with its new attempt paused at `phase`, send `signum` to the supervisor there: its exit code."""
    before = set(run_dir.glob("attempts/*")) if run_dir.exists() else set()
    supervisor = subprocess.Popen(argv, cwd=run_dir.parent, env={**env, "PAUSE_AT": phase}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not any((a / "paused").exists() for a in set(run_dir.glob("attempts/*")) - before):
        assert supervisor.poll() is None, f"ended before pausing at {phase}: {supervisor.stdout.read()}"
        assert time.monotonic() < deadline, f"never paused at {phase}"
        time.sleep(0.05)
    supervisor.send_signal(signum)
    out, _ = supervisor.communicate(timeout=180)
    assert supervisor.returncode == EXIT[signum], f"{phase}: {out}"
    return out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_at_any_phase_of_a_resumed_attempt_loses_nothing(tmp_path, env, signum):
    run_dir, ledger = tmp_path / "run", tmp_path / "steps"
    env = {**env, "PYTHONPATH": os.pathsep.join([env["PYTHONPATH"], str(PAUSE)])}
    command = [sys.executable, str(TRAIN_TINY), "--model-dir", str(tmp_path / "model"), "--output-dir",
               str(tmp_path / "out"), "--max-steps", str(MAX_STEPS), "--count-steps", str(ledger), *TINY]
    # Attempt 1 is stopped in its first step: the step ends and is saved, the checkpoint every phase resumes from.
    stopped_at("step", oomladder_argv("run", "--run-dir", str(run_dir), "--", *command), run_dir, env, signum)
    for phase in PHASES:
        stopped_at(phase, oomladder_argv("resume", str(run_dir)), run_dir, env, signum)
        assert processes_of(run_dir) == [], phase
        # The attempt began (or would have begun) where the last good checkpoint ended.
        attempt = view_of(run_dir).attempts[-1]
        assert attempt.resumed_from is not None and attempt.resume_missed is None, phase
    finished = oomladder("resume", str(run_dir), cwd=tmp_path, env=env)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert_each_step_ran_once(ledger, MAX_STEPS)
    view = view_of(run_dir)
    assert view.ended.reason.startswith("every step ran once")
    assert [len(steps) for steps in steps_by_process(ledger)] == [1, 1, 1, 1, 1]  # step, optimizer, save, the end
    assert processes_of(run_dir) == []
