"""The run directory as one supervisor's place: private, locked for the whole run (the lock dies with its
holder, however it dies), and never a door to files outside it. Real files and real processes."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import psutil
import pytest

from oomladder.errors import RunDirError
from oomladder.process.checkpoints import ours, remove_partial, remove_superseded
from oomladder.process.rundir import RunLock, make_run_dir, stop_run_processes
from oomladder.record.records import CheckpointRecord

HOLD = """
import sys, time
from pathlib import Path
from oomladder.process.rundir import RunLock
with RunLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_lock(run_dir):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_new_run_directory_is_private(tmp_path):
    make_run_dir(tmp_path / "a" / "run")
    assert stat.S_IMODE((tmp_path / "a" / "run").stat().st_mode) == 0o700


def test_a_run_directory_under_a_file_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match=r"'.*/file' is a file, not a folder; give another --run-dir"):
        make_run_dir(tmp_path / "file" / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_run_directory_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(RunDirError, match="give a --run-dir on a writable disk"):
        make_run_dir(tmp_path / "ro" / "run")


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunDirError) as refused:
            with RunLock(tmp_path):
                pass
        assert f"is in use by oomladder pid {holder.pid} on {socket.gethostname()}" in str(refused.value)
        assert "\n" not in str(refused.value)
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_holder_killed_with_sigkill_is_free_at_once(tmp_path):
    holder = hold_lock(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunLock(tmp_path):
        assert json.loads((tmp_path / ".oomladder.lock.json").read_text())["pid"] == os.getpid()


def test_each_node_has_its_own_lock_in_a_shared_directory(tmp_path):
    with RunLock(tmp_path, 0), RunLock(tmp_path, 1):
        pass


def test_a_lock_refused_before_the_run_began_leaves_no_files(tmp_path):
    lock = RunLock(tmp_path).__enter__()
    lock.discard()
    assert list(tmp_path.iterdir()) == []


def test_processes_an_earlier_supervisor_left_are_stopped_even_if_they_ignore_sigterm(tmp_path):
    run_dir = tmp_path.resolve()
    env = {**os.environ, "OOMLADDER_RUN_DIR": str(run_dir)}
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('up', flush=True); time.sleep(600)"], env=env,
                                stdout=subprocess.PIPE, text=True)
    other = subprocess.Popen(["sleep", "600"])  # another run's, or nobody's: left alone
    try:
        assert stubborn.stdout.readline().strip() == "up"
        started = time.monotonic()
        assert stop_run_processes(run_dir, grace=1.0) == [stubborn.pid]
        stubborn.wait(timeout=10)  # reaped already by the stop (it is this test's child)
        assert not psutil.pid_exists(stubborn.pid) and time.monotonic() - started < 10
        assert other.poll() is None
    finally:
        for p in (stubborn, other):
            p.kill()
            p.wait()


# --- checkpoints: only oomladder's own, inside the run directory, are ever deleted ----------------------

def emergency(folder):
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"weights")
    return CheckpointRecord(str(folder), int(folder.name.split("-")[2]))


def test_superseded_emergency_checkpoints_inside_the_run_directory_are_removed(tmp_path):
    old = emergency(tmp_path / "checkpoints" / "emergency-step-2-attempt-001")
    new = emergency(tmp_path / "checkpoints" / "emergency-step-4-attempt-002")
    remove_superseded(tmp_path, [old, new], keep=new.path)
    assert not (tmp_path / "checkpoints" / "emergency-step-2-attempt-001").exists()
    assert (tmp_path / "checkpoints" / "emergency-step-4-attempt-002" / "model.bin").read_bytes() == b"weights"


def test_a_journal_pointing_outside_the_run_directory_never_deletes_there(tmp_path):
    precious = emergency(tmp_path / "elsewhere" / "emergency-step-1-attempt-001")  # a journal edited by hand, or copied
    inside = tmp_path / "run" / "checkpoints"
    inside.mkdir(parents=True)
    (inside / "emergency-step-2-attempt-002").symlink_to(tmp_path / "elsewhere" / "emergency-step-1-attempt-001")
    linked = CheckpointRecord(str(inside / "emergency-step-2-attempt-002"), 2)
    yours = CheckpointRecord(str(tmp_path / "run" / "checkpoints" / "checkpoint-3"), 3, kind="program")
    (tmp_path / "run" / "checkpoints" / "checkpoint-3").mkdir()
    remove_superseded(tmp_path / "run", [precious, linked, yours], keep=None)
    assert (tmp_path / "elsewhere" / "emergency-step-1-attempt-001" / "model.bin").read_bytes() == b"weights"
    assert (inside / "emergency-step-2-attempt-002").is_symlink() and (inside / "checkpoint-3").is_dir()
    assert not ours(tmp_path / "run", precious.path) and not ours(tmp_path / "run", linked.path)


def test_a_planted_partial_link_is_not_followed_when_partial_checkpoints_are_cleared(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep").write_text("x")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "emergency-step-3-attempt-001.partial").symlink_to(tmp_path / "elsewhere")
    real = tmp_path / "checkpoints" / "emergency-step-5-attempt-002.partial"
    real.mkdir()
    remove_partial(tmp_path)
    assert (tmp_path / "elsewhere" / "keep").exists() and not real.exists()
