"""Faults on real processes, each ending in a finished run or a clean stop that says why, with
no process of the run left behind."""

import signal
import subprocess
import sys
import time

import pytest

from oomladder.classify import Kind
from tests.conftest import oomladder_argv, processes_of
from tests.e2e.test_recovery import PLAIN, oomladder, view_of

pytestmark = pytest.mark.e2e


def plain(run_dir, *extra, cap="600MiB", options=()):
    return ("run", "--memory-cap", cap, "--run-dir", str(run_dir), *options,
            "--set", "per_device_train_batch_size=16", "--set", "gradient_accumulation_steps=1", "--",
            sys.executable, str(PLAIN), "--batch", "{per_device_train_batch_size}",
            "--accum", "{gradient_accumulation_steps}", *extra)


def test_a_hung_worker_is_stopped_retried_once_and_the_run_stops(tmp_path, env):
    run_dir = tmp_path / "hang"
    result = oomladder(*plain(run_dir, "--hang-at", "2", options=("--hang-timeout", "4s")), cwd=tmp_path, env=env)
    assert result.returncode == 3
    view = view_of(run_dir)
    assert [a.failure.kind for a in view.attempts] == [Kind.HANG, Kind.HANG]
    assert view.ended.status == "hang"
    assert processes_of(run_dir) == []


def test_a_worker_killed_without_evidence_is_an_unexplained_kill_not_a_guess(tmp_path, env):
    run_dir = tmp_path / "killed"
    result = oomladder(*plain(run_dir, "--kill-self-at", "2"), cwd=tmp_path, env=env)
    assert result.returncode == 3
    failure = view_of(run_dir).attempts[0].failure
    assert failure.kind in (Kind.KILLED, Kind.HOST_OOM_KILL)  # HOST_OOM_KILL only if the cgroup says so
    assert failure.kind is Kind.HOST_OOM_KILL or "no sign of why" in failure.summary
    assert processes_of(run_dir) == []


def test_a_connection_reset_is_retried_on_the_same_plan(tmp_path, env):
    run_dir = tmp_path / "reset"
    result = oomladder(*plain(run_dir, "--reset-once", str(tmp_path / "reset-seen"), cap="4GiB"), cwd=tmp_path,
                       env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    assert [a.rung for a in view.attempts] == [None, "retry"]
    assert view.attempts[0].failure.kind is Kind.TRANSIENT
    assert view.attempts[0].plan == view.attempts[1].plan


def test_when_every_rung_fails_the_run_stops_with_the_ladder_exhausted(tmp_path, env):
    (tmp_path / "short.yaml").write_text("rungs: [{halve_batch: {times: 2}}]\n")
    run_dir = tmp_path / "exhausted"
    result = oomladder(*plain(run_dir, cap="150MiB", options=("--ladder", "short.yaml")), cwd=tmp_path, env=env)
    assert result.returncode == 4
    view = view_of(run_dir)
    assert [a.rung for a in view.attempts] == [None, "halve_batch", "halve_batch"]
    assert all(a.failure.is_memory for a in view.attempts)
    assert "no rung of the ladder is left" in (run_dir / "report.md").read_text()
    assert processes_of(run_dir) == []


def test_ctrl_c_stops_the_worker_group_and_exits_130(tmp_path, env):
    run_dir = tmp_path / "int"
    supervisor = subprocess.Popen(oomladder_argv(*plain(run_dir, "--steps", "100000", cap="4GiB")), cwd=tmp_path,
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run_dir / "attempts" / "001" / "stdout.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and "step 2" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    supervisor.send_signal(signal.SIGINT)
    assert supervisor.wait(timeout=120) == 130
    assert view_of(run_dir).ended.status == "interrupted"
    assert processes_of(run_dir) == []
