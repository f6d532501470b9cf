"""Memory bounded by attempts, not by steps or bytes: step sets as ranges, a bounded step log, progress files read
in bounded looks with a line limit, and a flood journaled at a bounded rate. Pure or on small files; the
flood end to end is tests/e2e/test_floods.py, the numbers at 10 million steps `python -m benchmarks.flood`."""

import json
import os
import subprocess
import sys
import time

import psutil

from oomladder.process.cgroup import attempt_root
from oomladder.process.workers import stop_processes
from oomladder.record.journal import Journal, read_journal
from oomladder.record.steps import StepLog, StepSet
from oomladder.run.intake import PER_LOOK, bounded
from oomladder.units import format_steps
from oomladder.worker.protocol.files import LINE_LIMIT, READ_LIMIT, AttemptFiles


def test_steps_in_order_are_one_range_and_out_of_order_ones_merge():
    steps = StepSet(range(1, 1_000_001))
    assert steps.ranges() == [(1, 1_000_000)] and len(steps) == 1_000_000 and 500_000 in steps
    steps.add(1_000_005)
    steps.add_range(1_000_001, 1_000_004)
    assert steps.ranges() == [(1, 1_000_005)]
    steps.add_range(10**12, 10**12)  # a trillion costs what one costs
    assert steps.gaps(1).ranges() == [(1_000_006, 10**12 - 1)] and format_steps(steps) == "1–1000005, 1000000000000"
    assert StepSet([1, 2, 5]).intersection(StepSet([2, 3, 4, 5, 6])) == [2, 5]


def test_the_step_log_keeps_a_bounded_sample_with_the_highest_peak_of_each_stretch():
    log = StepLog(limit=100)
    for step in range(1, 10_001):
        log.add(step, float(step), 5000 if step == 4321 else step % 10)
    assert len(log.times) <= 100 and min(log.times) == 1 and max(log.times) == 10_000
    assert max(log.peaks.values()) == 5000  # the spike survives the thinning


def test_a_progress_line_over_the_limit_is_skipped_without_being_held_and_the_next_ones_are_read(tmp_path):
    progress = tmp_path / "progress.0.jsonl"
    files = AttemptFiles(tmp_path)
    with open(progress, "w") as f:
        f.write(json.dumps({"step": 1, "executed": True}) + "\n")
        f.write("x" * (3 * READ_LIMIT))  # no newline yet: still being written, already too long
    assert [e for _, e in files.new_progress()] == [{"step": 1, "executed": True}] and files.overlong == 1
    looks = 0
    with open(progress, "a") as f:
        f.write("y" * 100 + "\n" + json.dumps({"step": 2, "executed": True}) + "\n")
    entries = []
    while True:
        entries += [e for _, e in files.new_progress()]
        looks += 1
        if not files.unread:
            break
    assert entries == [{"step": 2, "executed": True}] and files.overlong == 1 and looks <= 4
    with open(progress, "a") as f:
        f.write(json.dumps({"text": "z" * LINE_LIMIT}) + "\n" + json.dumps({"step": 3}) + "\n" + "[" * 5000 + "\n")
    assert [e for _, e in files.new_progress()] == [{"step": 3}] and files.overlong == 2


def test_a_look_journals_the_first_lines_of_each_rank_as_they_are_and_sums_up_the_rest():
    lines = "".join(json.dumps({"step": s, "executed": True, "peak": s, "ts": 1.0, "type": "run_ended", "attempt": 9,
                                "phase": "train"}) + "\n" for s in range(1, 10_001))
    odd = "".join([json.dumps({"executed": True, "step": 20_000}) + "\n",  # the keys in the other order
                   json.dumps({"step": 30_000, "loss": 1.0}) + "\n", "not json\n"])
    look = bounded(3, [(0, lines), (1, json.dumps({"step": 1, "executed": True}) + "\n"), (0, odd)])
    kept = [r[1] for r in look.records[:PER_LOOK]]
    assert all(r["attempt"] == 3 and "type" not in r and "ts" not in r for r in kept)  # the journal's own keys
    summed = look.records[-1][1]
    assert look.summed == 10_000 - PER_LOOK + 3 and len(look.records) == PER_LOOK + 2
    assert summed["steps"] == [[PER_LOOK + 1, 10_000], [20_000, 20_000]] and summed["peak"] == 10_000
    assert summed["phase"] == "train" and summed["summed"] == look.summed


def test_a_workers_line_cannot_choose_the_journals_own_keys(tmp_path):
    with Journal(tmp_path / "journal.jsonl") as journal:
        journal.append("progress", type="run_ended", v=99, ts=0, attempt=1)
    record, = read_journal(tmp_path / "journal.jsonl")
    assert record["type"] == "progress" and record["v"] != 99 and record["ts"] != 0


def test_a_second_signal_ends_the_grace_of_a_sweep_at_once():
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('up', flush=True); time.sleep(600)"], stdout=subprocess.PIPE)
    try:
        stubborn.stdout.readline()
        began, calls = time.monotonic(), []
        stop_processes([psutil.Process(stubborn.pid)], grace=30.0, hurry=lambda: calls.append(1) or len(calls) > 3)
        assert not psutil.pid_exists(stubborn.pid) and time.monotonic() - began < 10  # reaped by the stop
    finally:
        stubborn.kill()
        stubborn.wait()


def test_the_cgroup_v2_folder_is_found_from_mountinfo_and_its_absence_is_said(tmp_path):
    (tmp_path / "mountinfo").write_text("41 31 0:38 / /nowhere/unified rw,relatime - cgroup2 cgroup2 rw\n")
    (tmp_path / "cgroup").write_text("4:memory:/x\n0::/user.slice/job\n")
    base, why = attempt_root(tmp_path / "mountinfo", tmp_path / "cgroup")
    assert base is None and "is not delegated to this user" in why and "/nowhere/unified/user.slice/job" in why
    (tmp_path / "mountinfo").write_text("31 1 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    no_v2 = (None, "this machine has no cgroup v2 hierarchy")
    assert attempt_root(tmp_path / "mountinfo", tmp_path / "cgroup") == no_v2
    assert os.path.exists("/proc/self/mountinfo")  # and on this machine, whatever it answers, it answers
    attempt_root()
