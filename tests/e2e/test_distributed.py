"""torchrun with 2 ranks on the CPU (gloo): a real mid-run OOM under a per-rank cap, the whole group
relaunched on one new plan, the world effective batch kept, and no rank left running."""

import sys

import pytest

from tests.conftest import processes_of
from tests.e2e.test_recovery import TRAIN_TINY, oomladder, view_of

pytestmark = pytest.mark.e2e


def test_torchrun_two_ranks_recover_on_a_shared_plan(tmp_path, env):
    (tmp_path / "halve.yaml").write_text("rungs: [halve_batch]\n")
    run_dir = tmp_path / "ddp"
    result = oomladder("run", "--memory-cap", "1200MiB", "--ladder", "halve.yaml", "--run-dir", str(run_dir), "--",
                       sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(TRAIN_TINY),
                       "--model-dir", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"),
                       "--batch-size", "8", "--max-steps", "6", "--long-len", "384", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    first, last = view.attempts[0], view.attempts[-1]
    assert view.program_plan.world_size == 2
    assert first.failure.is_memory and first.failure.rank in (0, 1)
    assert last.plan.per_device_train_batch_size == 4 and last.plan.gradient_accumulation_steps == 2
    assert {a.plan.effective_batch for a in view.attempts} == {16}  # 8 x 1 x 2 ranks, then 4 x 2 x 2
    assert first.failure.step == 2  # the long sequences arrive at step 3 on both ranks
    assert last.status == "finished" and last.resumed_from == 2 and last.steps_run == (3, 6)
    for rank in (0, 1):  # every rank got the adapter, and with it the new plan
        assert (run_dir / "attempts" / f"{last.number:03d}" / f"progress.{rank}.jsonl").exists()
    assert "on rank" in (run_dir / "report.md").read_text()
    assert processes_of(run_dir) == []
