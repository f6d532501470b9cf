"""The emergency-checkpoint rules, each on a real Trainer with a real out-of-memory error under the cap,
checked against what the program itself recorded: the steps it ran, the checkpoint bytes it wrote.

- no checkpoint for an OOM in step 1, nor for one inside the optimizer step;
- a half-written (`.partial`) checkpoint is never resumed from;
- an emergency checkpoint is deleted once a newer one supersedes it, and all of them at the end;
- the program's own newer `checkpoint-N` is resumed from, and never written to;
- nothing of an attempt is alive when the next one starts.

These are the relaunch's checkpoints: where an OOM in a training step would be met in place, in-place recovery is
off (`relaunch_env`). An OOM inside the optimizer step is never met in place, and goes to the relaunch on the
default path (`env`).
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import oomladder_argv, processes_of
from tests.e2e.ledger import assert_each_step_ran_once, steps_by_process
from tests.e2e.test_recovery import HERE, TRAIN_TINY, oomladder, view_of

pytestmark = pytest.mark.e2e
LATE_OPTIMIZER_STATE = HERE / "programs" / "late_optimizer_state.py"
GROWS_TWICE = HERE / "programs" / "grows_twice.py"


def tiny(tmp_path, script=TRAIN_TINY, *extra):
    return [sys.executable, str(script), "--model-dir", str(tmp_path / "model"), "--output-dir",
            str(tmp_path / "out"), "--count-steps", str(tmp_path / "steps"), *extra]


def halving(tmp_path):
    """A ladder of halve_batch alone, for the tests that are not about the ladder: bf16, the default ladder's first
    rung that acts on a CPU, is minutes per step on a CPU without bf16 units."""
    (tmp_path / "halve.yaml").write_text("rungs: [halve_batch]\n")
    return ("--ladder", str(tmp_path / "halve.yaml"))


def stderr_of(run_dir, attempt):
    return (run_dir / "attempts" / f"{attempt:03d}" / "stderr.log").read_text()


def test_an_oom_in_step_1_saves_no_checkpoint_and_the_next_attempt_starts_at_step_1(tmp_path, relaunch_env):
    run_dir = tmp_path / "run"
    result = oomladder("run", "--memory-cap", "1200MiB", *halving(tmp_path), "--run-dir", str(run_dir), "--",
                       *tiny(tmp_path, TRAIN_TINY, "--grow-at-step", "1"), cwd=tmp_path, env=relaunch_env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    assert view.attempts[0].failure.is_memory and view.attempts[0].failure.step == 0
    assert "no emergency checkpoint: the OOM struck in the first step" in stderr_of(run_dir, 1)
    assert view.checkpoints == [] and view.attempts[1].resumed_from is None
    assert_each_step_ran_once(tmp_path / "steps", 6)
    assert view.ended.reason.startswith("every step ran once")


def test_an_oom_inside_the_optimizer_step_saves_no_checkpoint_and_the_repeated_steps_are_reported(tmp_path, env):
    """The weights may be half-updated: the next attempt starts again from the last whole checkpoint (none
    here), and the report counts the steps that ran twice instead of claiming every step ran once."""
    run_dir = tmp_path / "run"
    result = oomladder("run", "--memory-cap", "1200MiB", *halving(tmp_path), "--run-dir", str(run_dir), "--",
                       *tiny(tmp_path, LATE_OPTIMIZER_STATE, "--long-len", "32"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    assert "no emergency checkpoint: the OOM struck inside the optimizer step" in stderr_of(run_dir, 1)
    assert view.checkpoints == [] and view.attempts[1].resumed_from is None
    assert steps_by_process(tmp_path / "steps") == [[1, 2], [1, 2, 3, 4, 5, 6]]
    assert view.repeated_steps == [1, 2] and "1–2 ran more than once" in view.ended.reason
    report = json.loads((run_dir / "report.json").read_text())
    assert report["steps"]["repeated"] == [[1, 2]] and report["attempts"][1]["steps_text"] == "1–6 (1–2 again)"


def test_the_programs_own_newer_checkpoint_is_resumed_from_and_never_written_to(tmp_path, env):
    """No emergency checkpoint (the OOM strikes inside the optimizer step), but the program saved its own
    checkpoint-2: the next attempt resumes there, with a smaller micro-batch, and not one byte of the
    program's output_dir is changed by oomladder (the program recorded each file's hash as it saved it)."""
    run_dir, hashes = tmp_path / "run", tmp_path / "hashes"
    result = oomladder("run", "--memory-cap", "1200MiB", *halving(tmp_path), "--run-dir", str(run_dir), "--",
                       *tiny(tmp_path, LATE_OPTIMIZER_STATE, "--long-len", "32", "--save-steps", "2",
                             "--hash-checkpoints", str(hashes)), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    second = view.attempts[1]
    assert second.resumed_from == 2 and second.began_at == 2 and second.plan.per_device_train_batch_size == 8
    assert steps_by_process(tmp_path / "steps") == [[1, 2], [3, 4, 5, 6]]
    saved = [json.loads(line) for line in hashes.read_text().splitlines()]
    assert [Path(s["folder"]).name for s in saved] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    for checkpoint in saved:
        folder = tmp_path / checkpoint["folder"] if not Path(checkpoint["folder"]).is_absolute() else \
            Path(checkpoint["folder"])
        now = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(folder.rglob("*")) if p.is_file()}
        assert now == checkpoint["files"], folder.name


def test_a_checkpoint_cut_off_by_sigkill_mid_save_is_never_resumed_from(tmp_path, relaunch_env):
    """A full fine-tune's emergency save takes about half a second: the worker is killed while its
    `.partial` folder is being written. The next attempt starts from step 0, as it must, and says so."""
    run_dir = tmp_path / "run"
    # The ladder is pinned to rungs that fit this full fine-tune in one step with room to spare: what is tested is
    # the checkpoint, not the climb (bf16 + halve_batch fits by the estimate but not by much, and CPU autocast's
    # bf16 weight copies can take that margin).
    (tmp_path / "ladder.yaml").write_text("rungs: [halve_batch, halve_batch]\n")
    supervisor = subprocess.Popen(oomladder_argv("run", "--memory-cap", "1200MiB", "--run-dir", str(run_dir),
                                                 "--ladder", str(tmp_path / "ladder.yaml"), "--",
                                                 *tiny(tmp_path, TRAIN_TINY, "--full")),
                                  cwd=tmp_path, env=relaunch_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
    checkpoints = run_dir / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*.partial")) and time.monotonic() < deadline:
        time.sleep(0.002)
    workers = processes_of(run_dir, 1)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)  # freeze the save where it is, then kill: the folder stays half-written
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    output, _ = supervisor.communicate(timeout=600)
    assert workers and supervisor.returncode == 0, output
    view = view_of(run_dir)
    assert view.attempts[0].failure.is_memory  # the failure record was written before the save began
    assert view.checkpoints == [] and view.attempts[1].resumed_from is None and view.attempts[1].began_at == 0
    assert steps_by_process(tmp_path / "steps") == [[1, 2], [1, 2, 3, 4, 5, 6]]
    assert view.repeated_steps == [1, 2]
    assert not list(checkpoints.iterdir())  # the half-written folder went with the run


def test_a_superseded_emergency_checkpoint_is_deleted_and_the_last_one_goes_with_the_finished_run(tmp_path,
                                                                                                   relaunch_env):
    """Sequences grow at step 3 and again at step 5: two OOMs, two emergency checkpoints. The run is stopped
    after two attempts (--max-attempts 2), when only the newer checkpoint may be left; resume finishes it."""
    run_dir = tmp_path / "run"
    result = oomladder("run", "--memory-cap", "1200MiB", *halving(tmp_path), "--max-attempts", "2", "--run-dir",
                       str(run_dir), "--", *tiny(tmp_path, GROWS_TWICE, "--long-len", "256"), cwd=tmp_path,
                       env=relaunch_env)
    assert result.returncode == 5, result.stdout + result.stderr
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["emergency-step-4-attempt-002"]
    result = oomladder("resume", str(run_dir), cwd=tmp_path, env=relaunch_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list((run_dir / "checkpoints").iterdir())
    assert steps_by_process(tmp_path / "steps") == [[1, 2], [3, 4], [5, 6]]
    assert_each_step_ran_once(tmp_path / "steps", 6)


def test_nothing_of_an_attempt_is_alive_when_the_next_one_starts(tmp_path, relaunch_env):
    """The first attempt trains with two DataLoader worker processes and dies of an OOM. The moment the
    second attempt's folder appears (made just before its launch), no process of the first is left."""
    run_dir = tmp_path / "run"
    supervisor = subprocess.Popen(oomladder_argv("run", "--memory-cap", "1200MiB", *halving(tmp_path), "--run-dir",
                                                 str(run_dir), "--", *tiny(tmp_path, TRAIN_TINY, "--workers", "2")),
                                  cwd=tmp_path, env=relaunch_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
    seen_alive, during_first = None, 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and supervisor.poll() is None:
        if (run_dir / "attempts" / "002").exists():
            seen_alive = processes_of(run_dir, 1)
            break
        during_first = max(during_first, len(processes_of(run_dir, 1)))
        time.sleep(0.005)
    output, _ = supervisor.communicate(timeout=600)
    assert supervisor.returncode == 0, output
    assert during_first >= 3  # the worker and its two DataLoader workers were there to be stopped
    assert seen_alive == []
    assert_each_step_ran_once(tmp_path / "steps", 6)
    assert processes_of(run_dir) == []
