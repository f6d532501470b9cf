"""End to end: real training workers as real subprocesses, real out-of-memory errors under a real
memory cap, the ladder walked to a finished run. Nothing here is faked."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oomladder.classify import Kind
from oomladder.record.history import fold
from oomladder.record.journal import read_journal
from tests.conftest import capped_measure, oomladder_argv, processes_of
from tests.e2e.ledger import assert_each_step_ran_once

pytestmark = pytest.mark.e2e
HERE = Path(__file__).resolve().parent
TRAIN_TINY = HERE.parent.parent / "supervisor" / "demo" / "train_tiny.py"
PLAIN = HERE / "programs" / "plain_torch.py"


def oomladder(*args, cwd, env, timeout=900):
    return subprocess.run(oomladder_argv(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def view_of(run_dir):
    return fold(read_journal(run_dir / "journal.jsonl"))


def test_the_demo_hits_a_real_oom_and_finishes_with_the_same_effective_batch(tmp_path, env):
    """In a person's environment (`env`, in-place recovery on): the demo shows the relaunch by itself, unless it is
    given --in-place."""
    run_dir = tmp_path / "demo"
    result = oomladder("demo", "--run-dir", str(run_dir), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    first, last = view.attempts[0], view.attempts[-1]
    assert {a.peak_measure for a in view.attempts} == {capped_measure()}  # the default CPU cap (test_cpu_cap.py)
    assert first.failure.kind is Kind.CPU_OOM and first.failure.memory == "device"
    assert first.failure.step == 2  # died in step 3, when the long sequences came
    assert (last.status, last.step, last.max_steps) == ("finished", 4, 4)
    # One OOM was enough: the estimator took every rung it needed at once, and passed over int8,
    # which saves nothing on a model whose logits dominate.
    decision, = view.decisions
    assert len(view.attempts) == 2 and len(decision.rung_indices) >= 2 and "halve_batch" in decision.rung
    assert decision.estimate["after"] <= decision.estimate["capacity"]
    assert "passed over" in dict(decision.skipped)["int8"]
    assert {a.plan.effective_batch for a in view.attempts} == {16}
    assert "effective batch 16" in (run_dir / "attempts" / f"{last.number:03d}" / "stdout.log").read_text()
    assert_each_step_ran_once(run_dir / "steps.log", 4)  # the demo program's own record of its steps
    assert view.ended.reason.startswith("every step ran once")
    assert (run_dir / "report.md").read_text().startswith("# oomladder report\n\n**Training finished.**")
    assert json.loads((run_dir / "report.json").read_text())["effective_batch"] == {"before": 16, "after": 16}
    assert f"oomladder report {run_dir}" in result.stdout
    # The program's own output reached the console as it came, each line with its attempt and rank, before what
    # oomladder made of the attempt's end; and it is still all in the attempt's log.
    shown = result.stdout.splitlines()
    died = next(i for i, line in enumerate(shown) if line.startswith("oomladder: attempt 1: CPU allocator out of"))
    ended = shown.index(next(line for line in shown if line.startswith("[attempt 2 rank 0] finished 4 steps")))
    assert died < ended and any(line.startswith("[attempt 1 rank 0] {'loss': ") for line in shown[:died])
    assert shown[ended].endswith("effective batch 16") and shown[ended].removeprefix("[attempt 2 rank 0] ") in (
        run_dir / "attempts" / "002" / "stdout.log").read_text()
    assert processes_of(run_dir) == []


def _plain(run_dir, *extra, cap="600MiB"):
    return ("run", "--memory-cap", cap, "--run-dir", str(run_dir), "--set", "per_device_train_batch_size=16",
            "--set", "gradient_accumulation_steps=1", "--", sys.executable, str(PLAIN),
            "--batch", "{per_device_train_batch_size}", "--accum", "{gradient_accumulation_steps}", *extra)


def test_a_plain_pytorch_program_gets_its_plan_through_placeholders(tmp_path, env):
    run_dir = tmp_path / "plain"
    result = oomladder(*_plain(run_dir), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    assert view.attempts[0].failure.kind is Kind.CPU_OOM
    assert [a.rung for a in view.attempts][-1] == "halve_batch"
    last_stdout = (run_dir / "attempts" / f"{view.attempts[-1].number:03d}" / "stdout.log").read_text()
    assert "step 5 effective_batch 16" in last_stdout
    assert view.attempts[-1].command[-4:] == ["--batch", str(view.final_plan.per_device_train_batch_size),
                                             "--accum", str(view.final_plan.gradient_accumulation_steps)]
    # The program restarts from step 1 on each attempt and tells oomladder nothing of its steps: the run's
    # end says so rather than claiming every step ran.
    assert "every step ran" not in view.ended.reason and "is not known" in view.ended.reason
    assert processes_of(run_dir) == []


def test_a_real_bug_stops_the_run_at_once(tmp_path, env):
    run_dir = tmp_path / "bug"
    result = oomladder(*_plain(run_dir, "--fail", "bad data in shard 7"), cwd=tmp_path, env=env)
    assert result.returncode == 3
    view = view_of(run_dir)
    assert len(view.attempts) == 1 and not view.decisions
    assert view.attempts[0].failure.kind is Kind.ERROR
    assert view.attempts[0].failure.summary == "ValueError: bad data in shard 7"
    assert "ladder was not walked" in (run_dir / "report.md").read_text()


def test_sigterm_stops_the_worker_group_and_leaves_a_run_to_continue(tmp_path, env):
    run_dir = tmp_path / "term"
    argv = oomladder_argv(*_plain(run_dir, "--steps", "100000", cap="4GiB"))
    supervisor = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
    log = run_dir / "attempts" / "001" / "stdout.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and "step 3" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(run_dir)
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=60) == 143
    view = view_of(run_dir)
    assert view.ended.status == "interrupted" and view.attempts[0].status == "interrupted"
    assert processes_of(run_dir) == []
