"""Hostile and unlucky nights, on real processes: a second supervisor on the same run, a supervisor killed
with SIGKILL, a worker that ignores SIGTERM, a wrapper shell, a daemon, a helper that fails, a full disk,
a closed terminal, stale files. Nothing lost comes first; each test asserts what the program did (its
own ledger of steps) and what is left running (nothing)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oomladder.process.cgroup import attempt_root
from oomladder.process.rundir import run_key
from tests.conftest import oomladder_argv, processes_of
from tests.e2e.ledger import assert_each_step_ran_once, steps_by_process
from tests.e2e.test_recovery import oomladder, view_of

pytestmark = pytest.mark.e2e

NIGHT = Path(__file__).resolve().parent / "programs" / "night.py"


def night(run_dir, *options, cap="4GiB", wrapper=None):
    program = [sys.executable, str(NIGHT), *options]
    if wrapper == "bash":  # `bash -c "python train.py; ..."`: bash stays the worker, python its child
        program = ["bash", "-c", " ".join(program) + "; echo wrapper done"]
    return ("run", "--memory-cap", cap, "--run-dir", str(run_dir), "--", *program)


def start(args, cwd, env):
    return subprocess.Popen(oomladder_argv(*args), cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout=120.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def ran(ledger, step):
    return lambda: ledger.exists() and any(s >= step for steps in steps_by_process(ledger) for s in steps)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_second_supervisor_on_the_same_run_is_refused_naming_the_first_and_the_first_goes_on(tmp_path, env):
    run_dir, ledger = tmp_path / "run", tmp_path / "ledger"
    args = night(run_dir, "--steps", "8", "--sleep", "0.5", "--count-steps", str(ledger))
    first = start(args, tmp_path, env)
    wait_for(ran(ledger, 2), what="step 2")
    second = oomladder(*args, cwd=tmp_path, env=env, timeout=60)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    line, = second.stderr.strip().splitlines()
    assert f"is in use by oomladder pid {first.pid} on " in line and "give this run its own --run-dir" in line
    assert first.wait(timeout=300) == 0
    assert_each_step_ran_once(ledger, 8)
    assert processes_of(run_dir) == []


def test_a_supervisor_killed_with_sigkill_leaves_nothing_running_and_resume_loses_no_step(tmp_path, env):
    run_dir, ledger = tmp_path / "run", tmp_path / "ledger"
    supervisor = start(night(run_dir, "--steps", "10", "--sleep", "0.5", "--count-steps", str(ledger)), tmp_path,
                       env)
    wait_for(ran(ledger, 3), what="step 3")
    supervisor.kill()
    supervisor.wait()
    # The worker sees its supervisor gone, finishes its step in flight, saves it and exits.
    wait_for(lambda: processes_of(run_dir) == [], timeout=60, what="the orphaned worker to stop")
    resumed = oomladder("resume", str(run_dir), cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_each_step_ran_once(ledger, 10)
    view = view_of(run_dir)
    assert view.attempts[0].failure.summary == "the supervisor died during this attempt"
    assert view.attempts[1].resumed_from == view.attempts[1].began_at > 0


def test_resume_stops_a_worker_that_ignores_sigterm_left_by_a_killed_supervisor(tmp_path, env):
    run_dir, ledger = tmp_path / "run", tmp_path / "ledger"
    supervisor = start(night(run_dir, "--steps", "6", "--sleep", "0.5", "--ignore-term", "--count-steps",
                             str(ledger)), tmp_path, env)
    wait_for(ran(ledger, 2), what="step 2")
    stray = processes_of(run_dir)
    supervisor.kill()
    supervisor.wait()
    resumed = oomladder("resume", str(run_dir), cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not any(alive(pid) for pid in stray)
    warning, = [w for w in view_of(run_dir).warnings if w.about == "stray"]
    assert "still running from an earlier supervisor" in warning.text
    # Never two trainers at once: in the ledger, no line of the stray's comes after the resumed worker's first.
    pids = [line.split()[0] for line in ledger.read_text().splitlines()]
    assert pids == sorted(pids, key=pids.index) and str(stray[0]) in pids and pids[-1] != str(stray[0])
    assert steps_by_process(ledger)[-1][-1] == 6
    assert processes_of(run_dir) == []


def test_a_wrappers_python_stops_when_the_supervisor_is_killed(tmp_path, env):
    run_dir, ledger = tmp_path / "run", tmp_path / "ledger"
    supervisor = start(night(run_dir, "--steps", "1000", "--sleep", "0.3", "--count-steps", str(ledger),
                             wrapper="bash"), tmp_path, env)
    wait_for(ran(ledger, 2), what="step 2")
    supervisor.kill()
    supervisor.wait()
    wait_for(lambda: processes_of(run_dir) == [], timeout=60, what="bash's python to stop")
    steps = len(steps_by_process(ledger)[0])
    time.sleep(1.5)
    assert len(steps_by_process(ledger)[0]) == steps  # it stopped training, not just out of sight


def test_a_daemon_the_program_starts_does_not_outlive_the_run(tmp_path, env):
    run_dir, pidfile = tmp_path / "run", tmp_path / "daemon.pid"
    result = oomladder(*night(run_dir, "--steps", "3", "--daemon", str(pidfile)), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    daemon = int(pidfile.read_text())
    wait_for(lambda: not alive(daemon), timeout=30, what="the daemon to stop")
    assert processes_of(run_dir) == []


@pytest.fixture
def hidden(tmp_path):
    """Where the program writes the pid of a process that hides from the sweeps; ended after the test whatever
    happened, so that a failing test leaves nothing running."""
    pidfile = tmp_path / "hidden.pid"
    yield pidfile
    if pidfile.exists() and alive(int(pidfile.read_text())):
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest.mark.skipif(attempt_root()[0] is None, reason="this machine delegates no cgroup v2 to the tests")
def test_a_daemon_that_leaves_its_session_and_clears_its_environment_does_not_outlive_a_killed_supervisor(
        tmp_path, env, hidden):
    """setsid, env -i and SIGTERM ignored: neither the parent-death signal nor the environment finds it; the
    attempt's cgroup does, and resume ends it."""
    run_dir, ledger, pidfile = tmp_path / "run", tmp_path / "ledger", hidden
    supervisor = start(night(run_dir, "--steps", "6", "--sleep", "0.5", "--count-steps", str(ledger),
                             "--hidden-daemon", str(pidfile)), tmp_path, env)
    wait_for(ran(ledger, 2), what="step 2")
    daemon = int(pidfile.read_text())
    supervisor.kill()
    supervisor.wait()
    wait_for(lambda: processes_of(run_dir) == [], timeout=60, what="the worker to stop")
    assert alive(daemon)  # what the sweep by environment could not find
    resumed = oomladder("resume", str(run_dir), cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not alive(daemon) and not list(Path(attempt_root()[0]).glob(f"oomladder-{run_key(run_dir)}-*"))
    assert_each_step_ran_once(ledger, 6)


def test_without_cgroups_it_says_so_resume_finds_a_cleared_child_by_session_and_a_signal_in_the_sweep_ends_it(
        tmp_path, env, hidden):
    run_dir, ledger, pidfile = tmp_path / "run", tmp_path / "ledger", hidden
    env = {**env, "OOMLADDER_CGROUPS": "0"}
    supervisor = start(night(run_dir, "--steps", "6", "--sleep", "0.5", "--count-steps", str(ledger),
                             "--hidden-child", str(pidfile)), tmp_path, env)
    wait_for(ran(ledger, 2), what="step 2")
    child = int(pidfile.read_text())
    supervisor.kill()
    supervisor.wait()
    wait_for(lambda: processes_of(run_dir) == [], timeout=60, what="the worker to stop")
    assert alive(child)
    attempts = len(view_of(run_dir).attempts)
    # The sweep finds the child by its session, sends SIGTERM (ignored) and waits its grace (10 s): two signals
    # there end the run at once, journaled, without a new attempt. Two different signals, since the kernel keeps
    # only one of a kind pending: on a loaded machine two SIGTERMs 0.5 s apart can arrive as one. SIGHUP is the
    # lower number, so it is the first either way (exit 129).
    sweeping = start(("resume", str(run_dir)), tmp_path, env)
    wait_for(lambda: Path(f"{pidfile}.term").exists(), timeout=60, what="the sweep to reach the child")
    sweeping.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    stopped = time.monotonic()
    sweeping.send_signal(signal.SIGTERM)
    wait_for(lambda: not alive(child), timeout=60, what="the child to be killed")
    assert time.monotonic() - stopped < 8  # killed without waiting out the grace; the report is written after
    assert sweeping.wait(timeout=60) == 129
    view = view_of(run_dir)
    assert (view.ended.status, view.ended.exit_code) == ("interrupted", 129)
    assert len(view.attempts) == attempts and (run_dir / "report.md").exists()
    resumed = oomladder("resume", str(run_dir), cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_each_step_ran_once(ledger, 6)
    said, = [w for w in view_of(run_dir).warnings if w.about == "cgroup"]  # once, at the run's start
    assert "OOMLADDER_CGROUPS=0" in said.text


def test_a_helper_that_fails_does_not_outrank_the_programs_own_oom(tmp_path, env):
    run_dir, ledger = tmp_path / "run", tmp_path / "ledger"
    result = oomladder(*night(run_dir, "--steps", "4", "--helper-error", "--oom-at", "2", "--count-steps",
                              str(ledger), cap="2GiB"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    first = view_of(run_dir).attempts[0].failure
    assert first.is_memory and "ValueError" not in first.summary
    assert_each_step_ran_once(ledger, 4)


def test_stale_attempt_files_of_a_deleted_journal_are_set_aside_not_believed(tmp_path, env):
    run_dir = tmp_path / "run"
    stale = run_dir / "attempts" / "001"
    stale.mkdir(parents=True)
    (stale / "failure.0.json").write_text('{"exc_type": "RuntimeError", "message": "CUDA out of memory. Tried to '
                                          'allocate 2.00 GiB", "step": 1}')
    result = oomladder(*night(run_dir, "--steps", "3", "--fail", "bad data"), cwd=tmp_path, env=env)
    assert result.returncode == 3, result.stdout + result.stderr  # the program's bug, not the old OOM
    assert view_of(run_dir).attempts[0].failure.summary == "ValueError: bad data"
    aside, = run_dir.glob("attempts/001.stale-*")
    assert (aside / "failure.0.json").exists()  # kept for whoever left it


def test_a_closed_terminal_stops_the_run_with_129_and_a_report(tmp_path, env):
    run_dir, ledger = tmp_path / "run", tmp_path / "ledger"
    supervisor = start(night(run_dir, "--steps", "1000", "--sleep", "0.3", "--count-steps", str(ledger)), tmp_path,
                       env)
    wait_for(ran(ledger, 2), what="step 2")
    supervisor.send_signal(signal.SIGHUP)
    assert supervisor.wait(timeout=120) == 129
    view = view_of(run_dir)
    assert view.ended.status == "interrupted" and (run_dir / "report.md").exists()
    assert processes_of(run_dir) == []


def test_a_second_signal_stops_a_worker_that_ignores_the_first_at_once(tmp_path, env):
    run_dir, ledger = tmp_path / "run", tmp_path / "ledger"
    supervisor = start(night(run_dir, "--steps", "1000", "--sleep", "0.3", "--ignore-term", "--count-steps",
                             str(ledger)), tmp_path, env)
    wait_for(ran(ledger, 2), what="step 2")
    supervisor.send_signal(signal.SIGINT)
    # Heard (a second SIGINT sent before that could merge with the first in the kernel, on a loaded machine):
    wait_for(lambda: b'"interrupt"' in (run_dir / "journal.jsonl").read_bytes(), what="the stop to be journaled")
    time.sleep(1.0)
    assert supervisor.poll() is None  # the worker is given its grace (60 s) to save
    stopped = time.monotonic()
    supervisor.send_signal(signal.SIGINT)
    assert supervisor.wait(timeout=30) == 130 and time.monotonic() - stopped < 20
    assert processes_of(run_dir) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs (root only): a disk that can be filled without filling the machine's."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'not root'})")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk):
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError:
            pass


def test_a_full_disk_ends_the_run_in_one_line_with_the_worker_stopped_and_resume_continues(small_disk, tmp_path,
                                                                                            env):
    run_dir, ledger = small_disk / "run", tmp_path / "ledger"
    # Enough steps after the disk fills that the journal needs a new page (a tmpfs takes appends into a
    # page it already holds): 40 steps of about 250 bytes each.
    supervisor = start(night(run_dir, "--steps", "40", "--sleep", "0.2", "--count-steps", str(ledger)), tmp_path,
                       env)
    wait_for(ran(ledger, 2), what="step 2")
    fill(small_disk)
    out, err = supervisor.communicate(timeout=120)
    assert supervisor.returncode == 74, out + err
    assert "Traceback" not in err and "is full: free some space" in out
    assert processes_of(run_dir) == []
    (small_disk / "filler").unlink()
    resumed = oomladder("resume", str(run_dir), cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    ran_steps = sorted({s for steps in steps_by_process(ledger) for s in steps})
    assert ran_steps == list(range(1, 41))


def test_a_run_directory_that_cannot_be_made_is_one_line_and_nothing_runs(tmp_path, env):
    (tmp_path / "file").write_text("not a folder")
    result = oomladder(*night(tmp_path / "file" / "run", "--steps", "2"), cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line, = result.stderr.strip().splitlines()
    assert "is a file, not a folder" in line


def test_a_finished_run_directory_is_not_run_again(tmp_path, env):
    run_dir, ledger = tmp_path / "run", tmp_path / "ledger"
    args = night(run_dir, "--steps", "2", "--count-steps", str(ledger))
    assert oomladder(*args, cwd=tmp_path, env=env).returncode == 0
    journal = (run_dir / "journal.jsonl").read_bytes()
    again = oomladder(*args, cwd=tmp_path, env=env, timeout=60)
    assert again.returncode == 2 and "already finished" in again.stderr
    assert (run_dir / "journal.jsonl").read_bytes() == journal and len(steps_by_process(ledger)) == 1


def test_a_read_only_run_directory_is_one_line(tmp_path, env):
    run_dir = tmp_path / "ro"
    run_dir.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(run_dir)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        result = oomladder(*night(run_dir / "run", "--steps", "2"), cwd=tmp_path, env=env, timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        line, = result.stderr.strip().splitlines()
        assert "give a --run-dir on a writable disk" in line
    finally:
        subprocess.run(["umount", "-l", str(run_dir)], capture_output=True)


def test_nothing_is_left_in_the_process_table(tmp_path):
    """The tests above leave nothing of theirs running (a catch-all, after the others in this file)."""
    mine = [p for p in os.listdir("/proc") if p.isdigit() and "night.py" in _cmdline(p) and str(tmp_path.parent)
            in _environ(p)]
    assert mine == []


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _environ(pid):
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""

