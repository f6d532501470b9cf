"""Every popular way to train, wrapped unmodified: a real OOM mid-run under the cap, the run finishes, the
effective batch is measured inside the program as samples per optimizer step, every step (or sample) is
trained exactly once by the program's own record, and no process is left running. Nothing of oomladder is
in the programs; no placeholders and no --set."""

import re
import sys

import pytest

from tests.conftest import ROOT, processes_of
from tests.e2e.ledger import assert_each_step_ran_once, steps_by_process
from tests.e2e.test_recovery import oomladder, view_of

pytestmark = pytest.mark.e2e
ACCELERATE_LOOP = ROOT / "examples" / "accelerate_loop.py"
TRL_SFT = ROOT / "examples" / "trl_sft.py"
PLAIN_API = ROOT / "examples" / "plain_api.py"


def samples_per_step(run_dir):
    """The program's own 'optimizer step...: N samples' lines, over every attempt."""
    return [int(n) for log in sorted(run_dir.glob("attempts/*/stdout.log"))
            for n in re.findall(r"optimizer step(?: \d+)?: (\d+) samples", log.read_text())]


def own_log(run_dir):
    """The accelerate loop's own record of its optimizer steps, over every attempt: (its step number, the samples
    it trained on, its learning rate after the step)."""
    found = []
    for log in sorted(run_dir.glob("attempts/*/stdout.log")):
        for step, samples, lr in re.findall(r"optimizer step (\d+): \d+ samples \[([\d, ]*)\], loss [\d.]+, "
                                            r"lr (-?[\d.e-]+)", log.read_text()):
            found.append((int(step), [int(i) for i in samples.split(",")], float(lr)))
    return found


@pytest.mark.parametrize("style", ["accumulate", "plain-loop-two-epochs"])
def test_an_accelerate_loop_with_its_own_counters_resumes_as_a_continuous_run(tmp_path, env, style):
    """In the style of accelerate's examples (`with accelerator.accumulate(model)`), and a plain loop that steps
    its optimizer after every batch over two epochs: the plan's smaller micro-batch and accumulation reach both. The
    loop keeps its own step counter, stops at its last step and runs a LambdaLR to zero there: after the relaunch it
    reads as a continuous run (fast-forwarded through the steps already trained), never past its end."""
    run_dir = tmp_path / "run"
    program = ["--plain-loop", "--epochs", "2"] if style.startswith("plain-loop") else []
    (tmp_path / "halve.yaml").write_text("rungs: [halve_batch]\n")  # bf16 on a CPU is minutes per step
    result = oomladder("run", "--memory-cap", "1200MiB", "--ladder", str(tmp_path / "halve.yaml"), "--run-dir",
                       str(run_dir), "--", sys.executable, str(ACCELERATE_LOOP), "--model-dir", str(tmp_path / "model"),
                       *program, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    first, last = view.attempts[0], view.attempts[-1]
    assert first.failure.is_memory and first.steps == [1, 2]
    assert last.plan.per_device_train_batch_size < 16 and last.plan.effective_batch == 16
    assert last.resumed and last.began_at == 2 and last.steps == [3, 4, 5, 6]
    # What the program did, in its own words: steps 1 to 6 once each, 16 samples each, each sample once per epoch,
    # and the learning rate of a continuous 6-step schedule, 0 after the last step (never below).
    log = own_log(run_dir)
    assert [step for step, _, _ in log] == [1, 2, 3, 4, 5, 6]
    assert [len(samples) for _, samples, _ in log] == [16] * 6
    trained = [i for _, samples, _ in log for i in samples]
    epochs = 2 if program else 1
    assert sorted(trained) == sorted(list(range(96 // epochs)) * epochs)
    assert [lr for _, _, lr in log] == pytest.approx([1e-3 * (1 - k / 6) for k in range(1, 7)], rel=1e-6, abs=1e-12)
    assert "done: 6 optimizer steps by this program's own count" in (
        run_dir / "attempts" / f"{last.number:03d}" / "stdout.log").read_text()
    assert view.ended.reason.startswith("every step ran once")
    assert processes_of(run_dir) == []


@pytest.mark.parametrize("trainer, batch, steps, most", [("sft", 16, 4, 1), ("dpo", 8, 2, 2)])
def test_a_trl_lora_run_with_long_samples_finishes_within_its_failed_attempts(tmp_path, relaunch_env, trainer, batch,
                                                                              steps, most):
    """TRL's SFTTrainer (and DPOTrainer, whose pairs double the logits) in fp32, a quarter of the samples 8 times
    longer: out of memory in step 1, met by relaunches alone (`relaunch_env`: in-place recovery off; the SFT run's
    OOM met in place is tests/e2e/test_in_place.py's). The estimator counts the logits-sized tensors SFTTrainer's
    metrics keep, so its step-1 OOM needs one relaunch; DPOTrainer's are learned from the OOMs' own numbers, in at
    most two. Its bf16 works on the CPU (oomladder sets use_cpu)."""
    run_dir = tmp_path / "run"
    result = oomladder("run", "--memory-cap", "1200MiB", "--run-dir", str(run_dir), "--", sys.executable,
                       str(TRL_SFT), "--model-dir", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"),
                       "--count-steps", str(tmp_path / "steps"), "--batch-size", str(batch), "--max-steps", str(steps),
                       *(["--dpo"] if trainer == "dpo" else []), cwd=tmp_path, env=relaunch_env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    assert view.program_plan.precision == "fp32" and view.program_plan.per_device_train_batch_size == batch
    failed = [a for a in view.attempts if a.failure is not None]
    assert 1 <= len(failed) <= most and all(a.failure.is_memory for a in failed)
    assert view.attempts[-1].status == "finished"
    last = run_dir / "attempts" / f"{view.attempts[-1].number:03d}"
    assert f"= effective batch {batch}" in (last / "stdout.log").read_text()
    assert_each_step_ran_once(tmp_path / "steps", steps)
    assert processes_of(run_dir) == []


def test_a_plain_pytorch_loop_using_the_public_api_recovers_with_every_step_once(tmp_path, env):
    """`oomladder.plan(...)`, `oomladder.session(...)`, `resume()` and `step_done()`: the plan reaches the
    loop, the last finished step is saved after the OOM, and the next attempt continues after it."""
    run_dir = tmp_path / "run"
    result = oomladder("run", "--memory-cap", "600MiB", "--run-dir", str(run_dir), "--", sys.executable,
                       str(PLAIN_API), "--count-steps", str(tmp_path / "steps"),
                       cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    first, last = view.attempts
    assert first.failure.is_memory and first.steps == [1, 2] and view.checkpoints
    assert (last.plan.per_device_train_batch_size, last.plan.gradient_accumulation_steps) == (8, 2)
    assert last.resumed and last.steps == [3, 4, 5, 6]
    assert steps_by_process(tmp_path / "steps") == [[1, 2], [3, 4, 5, 6]]
    assert samples_per_step(run_dir) == [16] * 6
    assert processes_of(run_dir) == []


def test_a_program_no_adapter_reaches_is_told_so_and_no_step_is_claimed(tmp_path, env):
    run_dir = tmp_path / "run"
    result = oomladder("run", "--run-dir", str(run_dir), "--", "sh", "-c", "echo training elsewhere",
                       cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "oomladder's adapter did not load in this program" in result.stdout
    view = view_of(run_dir)
    assert not view.steps_reported and "is not known" in view.ended.reason
