"""The kernel's word for a host OOM kill (the cgroup's oom_kill counter, v2 or v1), and a cgroup per attempt."""

import os
import sys
import time

import psutil
import pytest

from oomladder.process.cgroup import AttemptGroup, attempt_root, oom_kill_count
from oomladder.process.workers import LaunchSpec, Worker


def test_cgroup_v2_memory_events(tmp_path):
    (tmp_path / "proc_cgroup").write_text("0::/user.slice/job-7\n")
    events = tmp_path / "root" / "user.slice" / "job-7" / "memory.events"
    events.parent.mkdir(parents=True)
    events.write_text("low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n")
    assert oom_kill_count(tmp_path / "root", tmp_path / "proc_cgroup") == 2


def test_cgroup_v1_memory_oom_control(tmp_path):
    (tmp_path / "proc_cgroup").write_text("12:cpu,cpuacct:/slurm/job_9\n4:memory:/slurm/job_9\n")
    control = tmp_path / "root" / "memory" / "slurm" / "job_9" / "memory.oom_control"
    control.parent.mkdir(parents=True)
    control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n")
    assert oom_kill_count(tmp_path / "root", tmp_path / "proc_cgroup") == 5


def test_no_readable_memory_controller_is_no_evidence(tmp_path):
    (tmp_path / "proc_cgroup").write_text("0::/\n")
    assert oom_kill_count(tmp_path / "empty", tmp_path / "proc_cgroup") is None
    assert oom_kill_count(tmp_path, tmp_path / "missing") is None


@pytest.mark.skipif(attempt_root()[0] is None, reason="this machine delegates no cgroup v2 to the tests")
def test_an_attempts_cgroup_holds_what_its_worker_starts_however_it_leaves_and_kill_ends_it(tmp_path):
    """The worker joins its attempt's cgroup before it runs the command: a grandchild that calls setsid and
    clears its environment is still in it, and one write to cgroup.kill ends them all."""
    base, _ = attempt_root()
    group = AttemptGroup.make(base, "test" + str(os.getpid()), 1)
    assert group is not None
    code = ("import subprocess, sys; p = subprocess.Popen(['env', '-i', sys.executable, '-c', 'import time; "
            "time.sleep(600)'], start_new_session=True); print(p.pid, flush=True); import time; time.sleep(600)")
    worker = Worker(LaunchSpec((sys.executable, "-c", code), dict(os.environ), str(tmp_path), tmp_path / "out",
                               tmp_path / "err", group.procs_file))
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "out").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        hidden = int((tmp_path / "out").read_text())
        assert set(group.pids()) == {worker.pid, hidden}
        assert sorted(group.kill()) == sorted([worker.pid, hidden])
        worker.popen.wait(timeout=10)
        assert gone(hidden) and not group.path.exists()
    finally:
        worker.reap_group()
        group.kill()


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, waiting for whoever reaps it
    except psutil.NoSuchProcess:
        return True


def test_the_consoles_launcher_is_still_the_real_one_so_its_attempts_get_cgroups():
    """The console wraps the launcher to show the program's output; the wrapper must not pass for a fake
    launcher's (whose attempts get no cgroup and say nothing of it)."""
    import inspect

    from oomladder.process.workers import spawn
    from oomladder.run.echo import echoing

    class Shown:
        shows_output = True

    assert echoing(spawn, Shown()) is not spawn and inspect.unwrap(echoing(spawn, Shown())) is spawn
