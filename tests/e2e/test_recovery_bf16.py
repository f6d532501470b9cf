"""End to end: an unmodified bf16 LoRA script, out of memory mid-run, finished by the ladder. In a file of its own
because it is the longest test after the demo (test_recovery.py): `--dist loadfile` can then run the two side by side.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from oomladder.classify import Kind
from oomladder.record.history import fold
from oomladder.record.journal import read_journal
from tests.conftest import oomladder_argv, processes_of
from tests.e2e.ledger import assert_each_step_ran_once

pytestmark = pytest.mark.e2e
TRAIN_TINY = Path(__file__).resolve().parent.parent.parent / "supervisor" / "demo" / "train_tiny.py"


def oomladder(*args, cwd, env, timeout=900):
    return subprocess.run(oomladder_argv(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def view_of(run_dir):
    return fold(read_journal(run_dir / "journal.jsonl"))


def test_an_unmodified_bf16_lora_script_recovers_mid_run(tmp_path, relaunch_env):
    """The shape of the user's night: Trainer + peft LoRA in bf16 at batch 16, fine at first, out of
    memory when the sequences grow at step 3; `oomladder run --memory-cap 1200MiB` finishes every step. Three steps,
    the last one long: bf16 is minutes per step on a CPU without bf16 units. What is tested is the ladder's walk from
    a bf16 program (bf16 passed over, halve_batch, resumed), so in-place recovery is off (`relaunch_env`)."""
    run_dir = tmp_path / "R"
    result = oomladder("run", "--memory-cap", "1200MiB", "--run-dir", str(run_dir), "--",
                       sys.executable, str(TRAIN_TINY), "--model-dir", str(tmp_path / "model"), "--output-dir",
                       str(tmp_path / "out"), "--bf16", "--batch-size", "16", "--max-steps", "3",
                       "--count-steps", str(tmp_path / "steps"), cwd=tmp_path, env=relaunch_env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    assert view.program_plan.precision == "bf16" and view.program_plan.per_device_train_batch_size == 16
    assert view.facts.base_frozen is True and view.facts.device == "cpu"
    assert all(a.failure.kind is Kind.CPU_OOM for a in view.attempts[:-1])
    assert view.attempts[-1].status == "finished" and view.attempts[-1].step == 3
    assert {a.plan.effective_batch for a in view.attempts} == {16}
    skipped = {name: why for d in view.decisions for name, why in d.skipped}
    assert skipped["bf16"] == "training already runs in bf16"
    final = view.final_plan
    assert final.per_device_train_batch_size * final.gradient_accumulation_steps == 16
    # Every optimizer step ran exactly once across the attempts, each resumed where the last stopped:
    # in the program's own record, and in the table, which counts what the workers reported.
    assert_each_step_ran_once(tmp_path / "steps", 3)
    ranges = [a.steps_run for a in view.attempts if a.steps_run]
    assert [s for first, last in ranges for s in range(first, last + 1)] == [1, 2, 3]
    assert all(a.resumed_from == 2 and a.began_at == 2 for a in view.attempts[1:])
    shown = oomladder("report", str(run_dir), cwd=tmp_path, env=relaunch_env)
    assert shown.returncode == 0 and "halve_batch" in shown.stdout and "Final plan" in shown.stdout
    md = oomladder("report", str(run_dir), "--format", "md", cwd=tmp_path, env=relaunch_env).stdout
    assert md == (run_dir / "report.md").read_text()
    assert processes_of(run_dir) == []
