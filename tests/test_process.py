"""The process layer on real processes: a worker is a group leader, and stopping it stops the group."""

import os
import signal
import subprocess
import sys
import time

from oomladder.process.workers import LaunchSpec, Worker, group_members

SPAWNS_A_CHILD = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; "
                  "time.sleep(60)']); print('ready', flush=True); time.sleep(60)")


def _spec(tmp_path, code):
    return LaunchSpec((sys.executable, "-c", code), dict(os.environ), str(tmp_path), tmp_path / "out.log",
                      tmp_path / "err.log")


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_stopping_a_worker_stops_its_children_too(tmp_path):
    worker = Worker(_spec(tmp_path, SPAWNS_A_CHILD))
    assert _wait_for(lambda: len(group_members(worker.pgid)) == 2)
    returncode = worker.stop(signal.SIGTERM, grace=5)
    assert returncode == -signal.SIGTERM
    assert group_members(worker.pgid) == []


def test_the_rank_of_a_launcher_that_dies_of_sigterm_without_passing_it_on_is_told_and_saves(tmp_path):
    """accelerate's single-process launcher and `bash -c` die of SIGTERM at once; their rank, left in the group,
    must still get the signal that lets it finish and save its step, not only the group's SIGKILL."""
    rank = ("import signal, sys, time; "
            "signal.signal(signal.SIGTERM, "
            "lambda *a: (time.sleep(0.3), open('saved', 'w').write('step'), sys.exit(143))); "
            "open('ready', 'w').write('1'); time.sleep(60)")
    launcher = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {rank!r}]).wait()"
    worker = Worker(_spec(tmp_path, launcher))
    assert _wait_for(lambda: (tmp_path / "ready").exists())
    worker.stop(signal.SIGTERM, grace=10)
    assert (tmp_path / "saved").read_text() == "step"
    assert group_members(worker.pgid) == []


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(60)")
    worker = Worker(_spec(tmp_path, code))
    assert _wait_for(lambda: "ready" in (tmp_path / "out.log").read_text())
    started = time.monotonic()
    assert worker.stop(signal.SIGTERM, grace=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_a_second_request_cuts_the_grace_period_short(tmp_path):
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(60)")
    worker = Worker(_spec(tmp_path, code))
    assert _wait_for(lambda: "ready" in (tmp_path / "out.log").read_text())
    started = time.monotonic()
    assert worker.stop(signal.SIGTERM, grace=60, hurry=lambda: time.monotonic() - started > 0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_a_daemon_that_left_the_group_is_stopped_with_the_supervisors_descendants(tmp_path):
    """A program's daemon that setsid's away is out of the worker's group: the subreaper keeps it a
    descendant, and the walk of the process tree finds it."""
    code = ("import subprocess; p = subprocess.Popen(['sleep', '600'], start_new_session=True); "
            "print(p.pid, flush=True)")
    helper = ("import sys, subprocess; from oomladder.process.workers import become_subreaper, stop_descendants; "
              "become_subreaper(); subprocess.run([sys.executable, '-c', %r]); import time; time.sleep(0.5); "
              "stop_descendants(); print('done', flush=True)") % code
    out = subprocess.run([sys.executable, "-c", helper], capture_output=True, text=True, timeout=60).stdout.split()
    daemon, done = int(out[0]), out[1]
    assert done == "done" and _wait_for(lambda: not os.path.exists(f"/proc/{daemon}"))


def test_what_a_finished_worker_left_behind_is_reaped(tmp_path):
    code = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
            "stdout=subprocess.DEVNULL)")
    worker = Worker(_spec(tmp_path, code))
    assert _wait_for(lambda: worker.poll() is not None)
    worker.reap_group()
    assert group_members(worker.pgid) == []


def test_a_worker_dies_with_its_supervisor(tmp_path):
    """The kernel's parent-death signal: no orphan keeps training (and a GPU) after oomladder is gone."""
    supervisor_code = (
        "import sys, time; sys.path.insert(0, %r); from pathlib import Path; import os;"
        "from oomladder.process.workers import LaunchSpec, Worker;"
        "w = Worker(LaunchSpec((sys.executable, '-c', 'import time; time.sleep(60)'), dict(os.environ), '.', "
        "Path(%r), Path(%r))); print(w.pid, flush=True); time.sleep(60)"
    ) % (os.getcwd(), str(tmp_path / "o"), str(tmp_path / "e"))
    parent = subprocess.Popen([sys.executable, "-c", supervisor_code], stdout=subprocess.PIPE, text=True)
    worker_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    assert _wait_for(lambda: not os.path.exists(f"/proc/{worker_pid}") or
                     open(f"/proc/{worker_pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z")


def test_a_worker_told_twice_that_its_supervisor_died_still_saves_its_step(tmp_path):
    """The kernel's parent-death SIGTERM, then the worker's own watch finding the supervisor gone: the watch
    must not send a second SIGTERM (which acts at once) before the step in flight is saved."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    step = (
        "import os, signal, time; from oomladder.worker import adapter, common;"
        "from oomladder.worker.state import STATE;"
        "common.stop_at_step_end_on(signal.SIGTERM);"
        "os.kill(os.getpid(), signal.SIGTERM);"  # the parent-death signal, first
        "adapter._watch_supervisor(); time.sleep(3.5);"  # a step longer than the watch's look
        "print('step saved after', signal.Signals(STATE.stop_requested).name, flush=True)"
    )
    done = subprocess.run([sys.executable, "-c", step], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OOMLADDER_SUPERVISOR_PID": str(gone.pid)})
    assert (done.returncode, done.stdout) == (0, "step saved after SIGTERM\n"), done.stderr


def test_the_post_import_hook_patches_a_module_when_it_is_imported(tmp_path, monkeypatch):
    from oomladder.worker.hooks.importhook import PostImportFinder
    (tmp_path / "patched_later.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    finder = PostImportFinder({"patched_later": lambda m: seen.append(m.VALUE)}, lambda hook, m: hook(m))
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    import patched_later  # noqa: F401
    assert seen == [1]
