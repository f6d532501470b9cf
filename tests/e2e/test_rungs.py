"""Rungs end to end on a real Trainer, each taken after a real failure and checked inside the program:
its own line of what it trains with, its own logged gradient norms, and its own record of the steps it
ran. (int8 and nf4 through BitsAndBytesConfig run in tests/e2e/test_loading.py, where they pay: while
the model loads.)"""

import ast
import sys

import pytest

from tests.conftest import processes_of
from tests.e2e.ledger import assert_each_step_ran_once
from tests.e2e.test_recovery import HERE, TRAIN_TINY, oomladder, view_of

pytestmark = pytest.mark.e2e
WORKERS_KILLED = HERE / "programs" / "workers_killed.py"
# A Llama whose activations, not its logits, fill memory: 27M parameters, 8 layers, a 2,000-token vocabulary.
DEEP = ("--vocab", "2000", "--hidden", "512", "--intermediate", "1376", "--layers", "8", "--heads", "8")


def said(run_dir, attempt):
    """The program's own 'training with ...' line of an attempt."""
    log = (run_dir / "attempts" / f"{attempt:03d}" / "stdout.log").read_text()
    return next(line for line in log.splitlines() if line.startswith("training with"))


def run(tmp_path, env, *args, script=TRAIN_TINY, program=()):
    run_dir = tmp_path / "run"
    result = oomladder("run", "--run-dir", str(run_dir), *args, "--", sys.executable, str(script), "--model-dir",
                       str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"), "--count-steps",
                       str(tmp_path / "steps"), *program, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir, view_of(run_dir)


def test_gradient_checkpointing_is_non_reentrant_and_the_adapters_still_learn(tmp_path, relaunch_env):
    """Reentrant checkpointing gives LoRA no gradients when the layers' inputs are frozen: the steps would
    run and learn nothing. The program's own logs show gradients in every checkpointed step."""
    (tmp_path / "gc.yaml").write_text("rungs: [gradient_checkpointing]\n")
    run_dir, view = run(tmp_path, relaunch_env, "--memory-cap", "450MiB", "--ladder", str(tmp_path / "gc.yaml"),
                        program=(*DEEP, "--batch-size", "8", "--long-len", "256"))
    assert [a.rung for a in view.attempts] == [None, "gradient_checkpointing"] and view.attempts[0].failure.is_memory
    assert "gradient checkpointing False" in said(run_dir, 1)
    assert "gradient checkpointing True {'use_reentrant': False}" in said(run_dir, 2)
    logs = (run_dir / "attempts" / "002" / "stdout.log").read_text().splitlines()
    norms = [float(ast.literal_eval(line)["grad_norm"]) for line in logs if "'grad_norm'" in line]
    assert len(norms) == 4 and all(n > 0 for n in norms)  # steps 3-6, each with gradients
    assert_each_step_ran_once(tmp_path / "steps", 6)


def test_fewer_dataloader_workers_after_one_is_killed_for_host_memory(tmp_path, env):
    """Two DataLoader workers, one killed as the kernel's OOM killer would kill it: the next attempt runs
    with one, resumed from the emergency checkpoint the intact main process saved."""
    run_dir, view = run(tmp_path, env, "--memory-cap", "1200MiB", script=WORKERS_KILLED,
                        program=("--workers", "2", "--long-len", "32", "--grow-at-step", "8", "--max-steps", "10"))
    first, second = view.attempts
    assert first.failure.memory == "host" and "DataLoader worker" in first.failure.summary
    assert second.rung == "fewer_workers" and second.resumed and view.checkpoints
    assert "dataloader workers 2" in said(run_dir, 1) and "dataloader workers 1" in said(run_dir, 2)
    assert_each_step_ran_once(tmp_path / "steps", 10)
    assert processes_of(run_dir) == []


def test_the_trainers_own_batch_search_is_turned_off_so_the_effective_batch_stays(tmp_path, relaunch_env):
    """With auto_find_batch_size the Trainer would catch the OOM itself, shrink the batch without raising
    accumulation and start the steps again; under oomladder it never sees one. In-place recovery off
    (`relaunch_env`): met in place, the OOM never leaves the step, and would not reach the Trainer's search either
    way; the OOM that leaves it for a relaunch is the one that tells."""
    (tmp_path / "halve.yaml").write_text("rungs: [halve_batch]\n")  # bf16 on a CPU is minutes per step
    run_dir, view = run(tmp_path, relaunch_env, "--memory-cap", "1200MiB", "--ladder", str(tmp_path / "halve.yaml"),
                        program=("--auto-find-batch-size",))
    assert len(view.attempts) == 2 and view.attempts[0].failure.is_memory
    last = (run_dir / "attempts" / "002" / "stdout.log").read_text()
    assert "= effective batch 16" in last
    assert_each_step_ran_once(tmp_path / "steps", 6)


def test_a_rung_that_breaks_a_program_that_worked_is_rolled_back_and_the_run_finishes(tmp_path, relaunch_env):
    """The program logs a spectral norm of a frozen weight after each step, which has no BFloat16 kernel on the
    CPU. bf16 loads the base weights in bf16 and breaks it; oomladder undoes bf16, blames the rung, not the
    program, and finishes on the other rungs."""
    run_dir, view = run(tmp_path, relaunch_env, "--memory-cap", "1200MiB",
                        script=HERE / "programs" / "spectral_monitor.py")
    first, broken, last = view.attempts
    assert first.failure.is_memory and "bf16" in broken.rung and broken.rolled_back
    assert "Low precision dtypes not supported" in broken.failure.summary
    assert last.plan.precision == "fp32" and last.plan.effective_batch == 16 and last.status == "finished"
    undo = view.decisions[-1]
    assert undo.rolled_back == 2 and [name for name, _, _ in undo.incompatible] == ["bf16"]
    assert view.ended.status == "finished" and view.ended.exit_code == 0
    # The broken plan failed before its first step: every step ran once, in the program's own record.
    assert_each_step_ran_once(tmp_path / "steps", 6)
    assert view.repeated_steps == []
    md = (run_dir / "report.md").read_text()
    assert "bf16 broke the program" in md and "your program is not at fault" in md
