"""The report's way to run the final plan without oomladder, taken at its word: the command it gives for a script
that reads its settings from its command line (HfArgumentParser, as Transformers' run_clm.py), run under the same
memory cap, trains to the end with no out-of-memory error, on the final plan's batch."""

import json
import shlex
import sys

import pytest

from tests.e2e.ledger import assert_each_step_ran_once
from tests.e2e.test_recovery import HERE, oomladder, view_of

pytestmark = pytest.mark.e2e
HF_ARGS = HERE / "programs" / "hf_args.py"


def test_the_reports_command_runs_the_final_plan_without_running_out_of_memory(tmp_path, env):
    first = tmp_path / "first"
    command = [sys.executable, str(HF_ARGS), "--model_dir", str(tmp_path / "model"), "--output_dir",
               str(tmp_path / "out"), "--per_device_train_batch_size", "16", "--max_steps", "3", "--learning_rate",
               "1e-3", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "True", "--logging_steps", "1",
               "--count_steps", str(tmp_path / "first.steps")]
    result = oomladder("run", "--memory-cap", "1200MiB", "--run-dir", str(first), "--", *command, cwd=tmp_path,
                       env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(first)
    assert view.facts.reads_flags  # the worker saw HfArgumentParser read TrainingArguments from the command line
    attempt, = view.attempts  # no relaunch: the command that ran is still the one at batch 16
    assert attempt.ahead.steps_split or attempt.recovered_in_place  # its long step ran in chunks
    reproduce = json.loads((first / "report.json").read_text())["reproduce"]
    assert reproduce["command_rewritten"]
    rerun = shlex.split(reproduce["command"])
    batch = int(rerun[rerun.index("--per_device_train_batch_size") + 1])
    accumulation = int(rerun[rerun.index("--gradient_accumulation_steps") + 1])
    assert batch < 16 and batch * accumulation == 16
    # Taken at its word: the same cap, one attempt allowed, and no step split (--no-in-place: none sized ahead, none
    # split after an OOM), as without oomladder.
    rerun[rerun.index("--count_steps") + 1] = str(tmp_path / "rerun.steps")
    again = tmp_path / "again"
    result = oomladder("run", "--memory-cap", "1200MiB", "--max-attempts", "1", "--no-in-place", "--run-dir",
                       str(again), "--", *rerun, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    attempt, = view_of(again).attempts
    assert attempt.failure is None and attempt.in_place == [] and attempt.status == "finished"
    assert f"batch {batch} x accumulation {accumulation}" in (again / "attempts" / "001" / "stdout.log").read_text()
    assert_each_step_ran_once(tmp_path / "rerun.steps", 3)
