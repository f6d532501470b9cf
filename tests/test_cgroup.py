"""The kernel's word for a host OOM kill: the cgroup's oom_kill counter, v2 or v1."""

from oomladder.process.cgroup import oom_kill_count


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
