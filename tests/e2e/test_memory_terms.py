"""Rungs where the memory goes, end to end on the CPU: a full fine-tune whose Adam states dominate
finishes on 8-bit AdamW after one OOM, resumes with its Adam moments carried over, and a LoRA run is told why
8-bit AdamW (and the CUDA-only rungs) do not apply to it. Each is the ladder's choice at a relaunch, so in-place
recovery is off (`relaunch_env`)."""

import pytest

from oomladder.memory.estimate import Term
from tests.e2e.ledger import assert_each_step_ran_once
from tests.e2e.test_rungs import run, said

pytestmark = pytest.mark.e2e
# 34M parameters in fp32 (10 layers, width 512, a 2,000-token vocabulary), every weight trains with AdamW:
# weights, gradients and Adam's two moments are 16 bytes a parameter, the moments half of it.
FULL_34M = ("--full", "--vocab", "2000", "--hidden", "512", "--intermediate", "1376", "--layers", "10", "--heads", "8",
            "--batch-size", "2", "--max-steps", "4")


def test_a_full_fine_tune_whose_optimizer_states_dominate_finishes_on_8bit_adamw(tmp_path, relaunch_env):
    """Sequences of 16 at batch 2: no rung that shrinks activations can help (the ladder used to walk halve_batch
    and checkpointing, then stop). The estimate names the Adam states and takes 8-bit AdamW at once."""
    run_dir, view = run(tmp_path, relaunch_env, "--memory-cap", "500MiB",
                        program=(*FULL_34M, "--optim", "adamw_torch", "--short-len", "16", "--long-len", "16"))
    assert len(view.attempts) <= 2 and view.attempts[0].failure.is_memory
    last = view.attempts[-1]
    assert last.status == "finished" and last.plan.optim == "adamw_bnb_8bit" and last.rung == "optimizer_8bit"
    assert {a.plan.effective_batch for a in view.attempts} == {2}
    decision, = view.decisions
    assert decision.reason.startswith("optimizer states are ") and "% of the estimated peak" in decision.reason
    assert Term(decision.estimate["dominant"]) is Term.OPTIMIZER_STATES
    # The program's own line of what it trains with: bitsandbytes' AdamW (8-bit states), where it had torch's.
    assert "optimizer torch.AdamW" in said(run_dir, 1) and "optimizer bitsandbytes.AdamW" in said(run_dir, 2)
    assert_each_step_ran_once(tmp_path / "steps", 4)
    report = (run_dir / "report.md").read_text()
    assert "optimizer_8bit" in report and "expected" in report


def test_a_resumed_full_fine_tune_carries_its_adam_moments_into_8bit_adamw(tmp_path, relaunch_env):
    """The OOM strikes when the sequences grow at step 3, after two steps of fp32 Adam: the emergency checkpoint
    holds PyTorch's Adam moments, and the next attempt resumes from it on 8-bit AdamW, the moments quantized. The
    ladder is 8-bit AdamW alone: what is tested is the resume into it, not the climb (at 256 tokens the default
    ladder's bf16 halves enough activations to be taken with it)."""
    (tmp_path / "ladder.yaml").write_text("rungs: [optimizer_8bit]\n")
    run_dir, view = run(tmp_path, relaunch_env, "--memory-cap", "560MiB", "--ladder", str(tmp_path / "ladder.yaml"),
                        program=(*FULL_34M, "--short-len", "16", "--long-len", "256"))
    first, last = view.attempts
    assert first.failure.is_memory and first.failure.step == 2
    assert last.rung == "optimizer_8bit" and last.resumed_from == 2 and last.status == "finished"
    log = (run_dir / "attempts" / "002" / "stderr.log").read_text()
    assert "Adam's moments from the checkpoint are carried over into 8-bit AdamW" in log
    assert_each_step_ran_once(tmp_path / "steps", 4)


def test_a_lora_run_is_told_why_8bit_adamw_and_the_cuda_rungs_do_not_apply(tmp_path, relaunch_env):
    # The default ladder's rungs around 8-bit AdamW, without bf16 (minutes per step on a CPU without bf16 units).
    (tmp_path / "ladder.yaml").write_text("rungs: [expandable_segments, fused_cross_entropy, optimizer_8bit, "
                                          "halve_batch, activation_offloading]\n")
    run_dir, view = run(tmp_path, relaunch_env, "--memory-cap", "1200MiB", "--ladder", str(tmp_path / "ladder.yaml"))
    assert view.attempts[-1].status == "finished"
    skipped = {name: why for d in view.decisions for name, why in d.skipped}
    assert "% of the parameters train" in skipped["optimizer_8bit"] and "full fine-tunes" in skipped["optimizer_8bit"]
    assert "CUDA only" in skipped["fused_cross_entropy"]
    assert "pinned host memory" in skipped.get("activation_offloading", "pinned host memory")
    assert all(a.plan.optim == "adamw_torch_fused" for a in view.attempts)
    report = (run_dir / "report.md").read_text()
    assert "optimizer_8bit" in report and "full fine-tunes" in report
