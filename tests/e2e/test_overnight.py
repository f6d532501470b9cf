"""Unattended nights: a scheduler's SIGTERM, and the supervisor itself killed with -9, both end in a
run that `oomladder resume` finishes with every step done once, and no process left behind."""

import os
import signal
import subprocess
import sys
import time

import pytest

from oomladder.record.history import fold
from oomladder.record.journal import read_journal
from tests.conftest import oomladder_argv, processes_of
from tests.e2e.ledger import assert_each_step_ran_once
from tests.e2e.test_recovery import TRAIN_TINY, oomladder

pytestmark = pytest.mark.e2e
STEPS = 10


def start(tmp_path, env):
    run_dir = tmp_path / "night"
    argv = oomladder_argv("run", "--run-dir", str(run_dir), "--", sys.executable, str(TRAIN_TINY),
                          "--model-dir", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"),
                          "--max-steps", str(STEPS), "--batch-size", "8", "--long-len", "32",
                          "--count-steps", str(tmp_path / "steps"))
    supervisor = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = run_dir / "attempts" / "001" / "progress.0.jsonl"
    deadline = time.monotonic() + 180
    while not (progress.exists() and '"step": 2' in progress.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert progress.exists(), "the worker never reported step 2"
    return supervisor, run_dir


def wait_gone(run_dir, timeout=60):
    deadline = time.monotonic() + timeout
    while processes_of(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    return processes_of(run_dir)


def steps_once(view):
    ranges = [a.steps_run for a in view.attempts if a.steps_run]
    return [s for first, last in ranges for s in range(first, last + 1)]


def test_sigterm_saves_the_step_in_flight_and_resume_finishes_the_run(tmp_path, env):
    supervisor, run_dir = start(tmp_path, env)
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=120) == 143
    assert wait_gone(run_dir) == []
    view = fold(read_journal(run_dir / "journal.jsonl"))
    assert view.ended.status == "interrupted" and view.checkpoints  # the step in flight was saved
    saved = view.checkpoints[-1].step

    result = oomladder("resume", str(run_dir), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = fold(read_journal(run_dir / "journal.jsonl"))
    assert view.attempts[-1].resumed_from == saved and view.attempts[-1].status == "finished"
    assert steps_once(view) == list(range(1, STEPS + 1))
    assert_each_step_ran_once(tmp_path / "steps", STEPS)  # the program's own record
    assert oomladder("resume", str(run_dir), cwd=tmp_path, env=env).stderr.startswith(
        "oomladder: the run in")  # finished: nothing to resume
    assert processes_of(run_dir) == []


def test_kill_9_of_the_supervisor_takes_the_worker_down_and_resume_finishes_the_run(tmp_path, env):
    supervisor, run_dir = start(tmp_path, env)
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait()
    assert wait_gone(run_dir) == []  # no orphan keeps training
    result = oomladder("resume", str(run_dir), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = fold(read_journal(run_dir / "journal.jsonl"))
    assert view.attempts[-1].status == "finished" and view.attempts[-1].step == STEPS
    # The dying worker saved its step in flight: nothing before it runs again.
    assert view.attempts[-1].resumed_from is not None and view.attempts[-1].resumed_from >= 2
    assert_each_step_ran_once(tmp_path / "steps", STEPS)  # the program's own record
    assert steps_once(view) == list(range(1, STEPS + 1)) and view.repeated_steps == []
    assert processes_of(run_dir) == []
