"""End to end: an ordinary PyTorch Lightning script (examples/lightning_finetune.py), nothing of oomladder in
it, under `oomladder run`. A real out-of-memory error under a real memory cap, or a real SIGTERM, and the
run finishes on the same training: checked against the program's own record of the optimizer steps it
ran and the samples each one trained on."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oomladder.classify import Kind
from tests.conftest import ROOT, oomladder_argv, processes_of
from tests.e2e.ledger import assert_each_step_ran_once, steps_by_process
from tests.e2e.test_recovery import oomladder, view_of

pytestmark = pytest.mark.e2e
LIGHTNING_TINY = ROOT / "examples" / "lightning_finetune.py"


def program(tmp_path, *extra):
    return [sys.executable, str(LIGHTNING_TINY), "--count-steps", str(tmp_path / "steps"),
            "--samples-log", str(tmp_path / "samples"), *extra]


def samples_by_step(path: Path) -> dict[int, list[int]]:
    """The samples each optimizer step trained on, as the program logged them (a step logged twice fails)."""
    steps: dict[int, list[int]] = {}
    for line in path.read_text().splitlines():
        _pid, step, samples = line.split()
        assert int(step) not in steps, f"step {step} ran twice"
        steps[int(step)] = [int(s) for s in samples.split(",")]
    return steps


def test_an_unmodified_lightning_fine_tune_recovers_mid_run_with_its_effective_batch_and_data(tmp_path, env):
    """The brief's night: a LightningModule and a LightningDataModule with `batch_size`, fp32 at batch 16, fine at
    first and out of memory when the sequences grow at step 3. Every step then runs once, each on the 16 samples
    the uninterrupted run gives it, and the resumed attempt trains on the plan's smaller micro-batch."""
    run_dir = tmp_path / "run"
    result = oomladder("run", "--memory-cap", "500MiB", "--run-dir", str(run_dir), "--", *program(tmp_path),
                       cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    first, last = view.attempts[0], view.attempts[-1]
    assert first.failure.kind is Kind.CPU_OOM and first.failure.step == 2  # a real OOM, in step 3
    assert (last.status, last.step, last.max_steps) == ("finished", 6, 6)
    # The program's own settings were observed: every rung had what it needed.
    own = view.program_plan
    assert (own.per_device_train_batch_size, own.gradient_accumulation_steps, own.precision) == (16, 1, "fp32")
    assert {a.plan.effective_batch for a in view.attempts} == {16}
    final = view.final_plan
    assert final.per_device_train_batch_size < 16 and final.per_device_train_batch_size * \
        final.gradient_accumulation_steps == 16

    # What the program itself did: each step once, resumed after step 2, every step on 16 samples, in order.
    assert_each_step_ran_once(tmp_path / "steps", 6)
    assert [len(s) for s in steps_by_process(tmp_path / "steps")] == [2, 4]
    samples = samples_by_step(tmp_path / "samples")
    assert [samples[step] for step in range(1, 7)] == [list(range(16 * s, 16 * s + 16)) for s in range(6)]
    stdout = (run_dir / "attempts" / f"{last.number:03d}" / "stdout.log").read_text()
    micro = f"micro-batches of {final.per_device_train_batch_size} x {final.gradient_accumulation_steps}"
    assert stdout.count(f"16 samples in {micro}") == 4  # the plan is what ran: steps 3-6
    if final.precision == "bf16":
        assert "precision bf16-mixed" in stdout

    assert all(a.resumed_from == 2 and a.began_at == 2 for a in view.attempts[1:])
    assert view.repeated_steps == [] and view.ended.reason.startswith("every step ran once")
    assert not list((run_dir / "checkpoints").iterdir())  # the emergency checkpoint went with the finished run
    assert processes_of(run_dir) == []


def test_sigterm_saves_the_step_in_flight_and_resume_continues_a_shuffled_epoch_as_if_uninterrupted(tmp_path, env):
    """A scheduler's SIGTERM mid-run: the step in flight finishes (accumulation 2: it may come between two
    micro-batches) and is saved, and `oomladder resume` continues. Shuffled, with two DataLoader workers and the
    batch as the module's hyperparameter. Epochs of 6 steps: the signal comes in the second epoch, whose order
    the resumed process would not draw again by itself (the workers' seeds took other draws before it), and a
    third epoch is drawn after the resume. The samples of every step are those of the same script run straight
    through without oomladder."""
    args = ("--shuffle", "--workers", "2", "--batch-size-as-hparam", "--batch-size", "4", "--grad-accum", "2",
            "--max-steps", "14", "--samples", "48", "--long-len", "32")
    straight = tmp_path / "straight"
    straight.mkdir()
    done = subprocess.run(program(straight, *args), cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr

    run_dir = tmp_path / "run"
    supervisor = subprocess.Popen(oomladder_argv("run", "--run-dir", str(run_dir), "--", *program(tmp_path, *args)),
                                  cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = run_dir / "attempts" / "001" / "progress.0.jsonl"
    deadline = time.monotonic() + 300
    while not (progress.exists() and '"step": 7,' in progress.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=120) == 143
    view = view_of(run_dir)
    assert view.ended.status == "interrupted" and view.checkpoints  # the step in flight was saved
    saved = view.checkpoints[-1].step
    assert 7 <= saved < 14 and steps_by_process(tmp_path / "steps") == [list(range(1, saved + 1))]

    result = oomladder("resume", str(run_dir), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    assert view.attempts[-1].resumed_from == saved and view.attempts[-1].status == "finished"
    assert view.program_plan.dataloader_num_workers == 2 and view.program_plan.per_device_train_batch_size == 4
    assert_each_step_ran_once(tmp_path / "steps", 14)
    assert samples_by_step(tmp_path / "samples") == samples_by_step(straight / "samples")
    assert processes_of(run_dir) == []
