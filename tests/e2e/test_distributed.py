"""torchrun with 2 ranks on the CPU (gloo): a real mid-run OOM under a per-rank cap, the whole group
relaunched on one new plan, the world effective batch kept, and no rank left running. On the default path
(`env`): in-place recovery declines several ranks (a split on one would add gradient exchanges the others never
join), journals why, and the relaunch follows."""

import sys

import pytest

from tests.conftest import capped_measure, processes_of
from tests.e2e.ledger import assert_each_step_ran_once
from tests.e2e.test_recovery import HERE, TRAIN_TINY, oomladder, view_of

pytestmark = pytest.mark.e2e
RANK1_GROWS = HERE / "programs" / "rank1_grows.py"
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2")


def halving_run(tmp_path, env, name, launcher, script=TRAIN_TINY, max_steps=6):
    """Two ranks at per-device batch 8 whose sequences grow to 384 tokens at step 3, under a 1200MiB cap
    per rank, with a ladder of one rung (halve_batch): (result, view, run directory)."""
    (tmp_path / "halve.yaml").write_text("rungs: [halve_batch]\n")
    run_dir = tmp_path / name
    result = oomladder("run", "--memory-cap", "1200MiB", "--ladder", "halve.yaml", "--run-dir", str(run_dir), "--",
                       *launcher, str(script), "--model-dir", str(tmp_path / "model"), "--output-dir",
                       str(tmp_path / "out"), "--batch-size", "8", "--max-steps", str(max_steps), "--long-len", "384",
                       "--count-steps", str(tmp_path / f"{name}.steps"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    # What the program did (rank 0's record): each optimizer step once, over both launches of the group.
    assert_each_step_ran_once(tmp_path / f"{name}.steps", max_steps)
    return result, view_of(run_dir), run_dir


def test_torchrun_two_ranks_recover_on_a_shared_plan(tmp_path, env):
    _, view, run_dir = halving_run(tmp_path, env, "ddp", TORCHRUN)
    first, last = view.attempts[0], view.attempts[-1]
    assert view.program_plan.world_size == 2
    assert first.failure.is_memory and first.failure.rank in (0, 1)
    assert last.plan.per_device_train_batch_size == 4 and last.plan.gradient_accumulation_steps == 2
    assert {a.plan.effective_batch for a in view.attempts} == {16}  # 8 x 1 x 2 ranks, then 4 x 2 x 2
    assert first.failure.step == 2  # the long sequences arrive at step 3 on both ranks
    # Not split in place, and the journal says why: a split on one rank would add exchanges the other never joins.
    assert first.in_place and all(r.outcome == "declined" and "several processes" in r.reason for r in first.in_place)
    assert last.status == "finished" and last.resumed_from == 2 and last.steps_run == (3, 6)
    for rank in (0, 1):  # every rank got the adapter, and with it the new plan
        assert (run_dir / "attempts" / f"{last.number:03d}" / f"progress.{rank}.jsonl").exists()
    assert "on rank" in (run_dir / "report.md").read_text()
    assert processes_of(run_dir) == []


def test_accelerate_launch_two_ranks_recover_on_a_shared_plan(tmp_path, env):
    """The same unmodified script under `accelerate launch`: its ranks get the adapter through the
    environment, as torchrun's do (accelerate runs torchrun's launcher in its own process)."""
    env = {**env, "HF_HOME": str(tmp_path / "hf")}  # no accelerate config of the person running the tests
    # --multi_gpu is accelerate's data-parallel launcher; with no GPU the Trainer's ranks use gloo on the CPU.
    # (--cpu alone would start one process.) Port 0: a free port, so parallel CI jobs do not collide.
    accelerate = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--num_cpu_threads_per_process", "1", "--main_process_port", "0")
    _, view, run_dir = halving_run(tmp_path, env, "accelerate", accelerate, max_steps=4)
    first, last = view.attempts[0], view.attempts[-1]
    assert view.program_plan.world_size == 2
    assert first.failure.is_memory and first.failure.rank in (0, 1) and first.failure.step == 2
    assert (last.plan.per_device_train_batch_size, last.plan.gradient_accumulation_steps) == (4, 2)
    assert {a.plan.effective_batch for a in view.attempts} == {16}
    assert last.status == "finished" and last.resumed_from == 2 and last.steps_run == (3, 4)
    # The launcher's own process is not rank 0: its peak (the resident set) is not mixed into rank 0's.
    assert {a.peak_measure for a in view.attempts} == {capped_measure()}
    for rank in (0, 1):
        assert (run_dir / "attempts" / f"{last.number:03d}" / f"progress.{rank}.jsonl").exists()
    assert processes_of(run_dir) == []


def test_an_oom_on_rank_1_alone_still_resumes_from_the_last_whole_step(tmp_path, env):
    """Rank 1 runs out of memory while rank 0 waits for it in a collective. Rank 0's collective breaks
    ('Connection closed by peer'), and rank 0, which holds the same weights, saves the end of step 2."""
    _, view, run_dir = halving_run(tmp_path, env, "rank1", TORCHRUN, RANK1_GROWS)
    first, last = view.attempts[0], view.attempts[-1]
    assert first.failure.is_memory and first.failure.rank == 1 and first.failure.step == 2
    assert [c.step for c in view.checkpoints] == [2]  # written by rank 0, which did not run out of memory
    assert last.status == "finished" and last.resumed_from == 2 and last.steps_run == (3, 6)
    assert processes_of(run_dir) == []
