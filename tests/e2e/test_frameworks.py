"""Every popular way to train, wrapped unmodified: a real OOM mid-run under the cap, the run finishes, the
effective batch is measured inside the program as samples per optimizer step, every step (or sample) is
trained exactly once by the program's own record, and no process is left running. Nothing of oomladder is
in the programs; no placeholders and no --set."""

import re
import sys
from collections import Counter

import pytest

from tests.conftest import processes_of
from tests.e2e.ledger import assert_each_step_ran_once, steps_by_process
from tests.e2e.test_recovery import HERE, oomladder, view_of

pytestmark = pytest.mark.e2e
ACCELERATE_LOOP = HERE / "programs" / "accelerate_loop.py"
TRL_SFT = HERE / "programs" / "trl_sft.py"


def samples_per_step(run_dir):
    """The program's own 'optimizer step: N samples' lines, over every attempt."""
    return [int(n) for log in sorted(run_dir.glob("attempts/*/stdout.log"))
            for n in re.findall(r"optimizer step: (\d+) samples", log.read_text())]


@pytest.mark.parametrize("style", ["accumulate", "plain-loop"])
def test_an_accelerate_loop_recovers_with_every_sample_trained_once(tmp_path, env, style):
    """In the style of accelerate's examples (`with accelerator.accumulate(model)`), and a plain loop that
    steps its optimizer after every batch: the plan's smaller micro-batch and accumulation reach both."""
    run_dir, samples = tmp_path / "run", tmp_path / "samples"
    result = oomladder("run", "--memory-cap", "1200MiB", "--run-dir", str(run_dir), "--", sys.executable,
                       str(ACCELERATE_LOOP), "--model-dir", str(tmp_path / "model"), "--count-samples", str(samples),
                       *(["--plain-loop"] if style == "plain-loop" else []), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    first, last = view.attempts[0], view.attempts[-1]
    assert first.failure.is_memory and first.steps == [1, 2]
    assert last.plan.per_device_train_batch_size < 16 and last.plan.effective_batch == 16
    assert last.resumed and last.began_at == 2 and last.steps == [3, 4, 5, 6]
    # What the program did: 16 samples in each of its 6 optimizer steps, each of the 96 samples once.
    assert samples_per_step(run_dir) == [16] * 6
    trained = [int(line.split()[1]) for line in samples.read_text().splitlines()]
    assert sorted(trained) == list(range(96)) and max(Counter(trained).values()) == 1
    assert view.ended["reason"].startswith("every step ran once")
    assert processes_of(run_dir) == []


def test_a_trl_sft_lora_run_with_long_samples_finishes_within_two_failed_attempts(tmp_path, env):
    """TRL's SFTTrainer in fp32 at batch 16, a quarter of its samples 8 times longer: out of memory in step 1.
    Its bf16 works on the CPU (oomladder sets use_cpu), and its extra logits-sized tensors are learned from
    the OOMs' own numbers."""
    run_dir = tmp_path / "run"
    result = oomladder("run", "--memory-cap", "1200MiB", "--run-dir", str(run_dir), "--", sys.executable,
                       str(TRL_SFT), "--model-dir", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"),
                       "--count-steps", str(tmp_path / "steps"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    assert view.program_plan.precision == "fp32" and view.program_plan.per_device_train_batch_size == 16
    failed = [a for a in view.attempts if a.failure is not None]
    assert 1 <= len(failed) <= 2 and all(a.failure.is_memory for a in failed)
    assert view.attempts[-1].status == "finished"
    assert "= effective batch 16" in (run_dir / "attempts" / f"{view.attempts[-1].number:03d}" / "stdout.log").read_text()
    assert_each_step_ran_once(tmp_path / "steps", 4)
    assert steps_by_process(tmp_path / "steps")[-1] == [1, 2, 3, 4]
    assert processes_of(run_dir) == []
