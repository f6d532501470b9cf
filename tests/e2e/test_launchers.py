"""The process that trains is the worker, however the command starts it: TRL's CLI (which runs `accelerate launch`,
which starts python), `accelerate launch` with one process under a `bash -c` wrapper, a notebook run by papermill
(whose kernel trains). Each has a real OOM under the cap, finishes with the effective batch kept and each step once
by the program's own record, and shows the peak of the process that trained (capped: measured over its baseline)
rather than the launcher's. A launcher's own failure stays its own."""

import json
import sys
from collections import Counter

import pytest

from tests.conftest import capped_measure, processes_of
from tests.e2e.ledger import assert_each_step_ran_once, steps_by_process, steps_in_trainer_logs
from tests.e2e.programs import notebook_tiny
from tests.e2e.test_frameworks import ACCELERATE_LOOP, own_log
from tests.e2e.test_recovery import oomladder, view_of

pytestmark = pytest.mark.e2e
CAPPED = capped_measure()


def with_venv(env):
    """The environment with this interpreter's scripts (trl, accelerate, papermill) first on PATH."""
    return {**env, "PATH": f"{sys.prefix}/bin:{env['PATH']}"}


def halving(tmp_path):
    (tmp_path / "halve.yaml").write_text("rungs: [halve_batch]\n")  # bf16 on a CPU is minutes per step
    return ("--ladder", str(tmp_path / "halve.yaml"))


def test_trl_s_cli_recovers_in_its_training_process_and_the_report_says_so(tmp_path, env, hub):
    """`trl sft` parses its arguments, then `accelerate launch` starts trl/scripts/sft.py: the OOM in step 3 is met
    in place there, and the journal has it (before, it said no adapter reached the program)."""
    run_dir = tmp_path / "run"
    result = oomladder("run", "--memory-cap", "1200MiB", "--no-split-ahead", "--run-dir", str(run_dir), "--", "trl",
                       "sft", "--model_name_or_path", f"{hub}/model", "--dataset_name", f"{hub}/data", "--output_dir",
                       str(tmp_path / "out"), "--per_device_train_batch_size", "16", "--max_steps", "4",
                       "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--use_peft",
                       "--lora_target_modules", "q_proj", "v_proj", "--max_length", "1024", "--bf16", "false",
                       "--train_sampling_strategy", "sequential", "--dataloader_num_workers", "0",
                       cwd=tmp_path, env=with_venv(env))
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    attempt, = view.attempts
    record, = attempt.in_place
    assert (record.outcome, record.step) == ("split", 3) and record.numbers["tried_to_allocate"] > 0
    assert view.program_plan.per_device_train_batch_size == 16 and attempt.plan.effective_batch == 16
    assert (attempt.status, attempt.peak_measure) == ("finished", CAPPED)
    assert "trl/scripts/sft.py" in view.facts.trains_in
    # The Trainer's own log: one line per optimizer step, each step once, all in one process.
    assert steps_in_trainer_logs([run_dir / "attempts" / "001" / "stdout.log"], 4) == [[1, 2, 3, 4]]
    assert processes_of(run_dir) == []


def test_accelerate_launch_under_a_bash_wrapper_is_one_rank_and_the_wrapper_s_exit_0_hides_nothing(tmp_path, env, hub):
    """bash -> accelerate launch -> python: the python trains. accelerate's single-process launcher never goes
    through torch's elastic launcher; the wrapper ends with `echo`, so the command exits 0 after the OOM."""
    run_dir = tmp_path / "run"
    script = (f"accelerate launch --num_processes 1 --cpu {ACCELERATE_LOOP} --model-dir {hub}/model --steps 4; "
              f"echo the wrapper goes on")
    result = oomladder("run", "--memory-cap", "1200MiB", *halving(tmp_path), "--run-dir", str(run_dir), "--",
                       "bash", "-c", script, cwd=tmp_path, env=with_venv(env))
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    first, last = view.attempts
    assert first.failure.is_memory and first.steps == [1, 2] and first.peak_measure == CAPPED
    assert last.resumed and last.steps == [3, 4] and last.plan.effective_batch == 16
    assert "accelerate_loop.py" in view.facts.trains_in
    # What the program did, by its own printed record: its steps 1 to 4 once each, 16 samples in each, each of the
    # 64 samples once.
    steps = own_log(run_dir)
    assert [step for step, _, _ in steps] == [1, 2, 3, 4] and [len(s) for _, s, _ in steps] == [16] * 4
    trained = [i for _, samples, _ in steps for i in samples]
    assert sorted(trained) == list(range(64)) and max(Counter(trained).values()) == 1
    assert processes_of(run_dir) == []


def test_a_launcher_s_own_failure_is_its_own_not_memory(tmp_path, env):
    run_dir = tmp_path / "run"
    result = oomladder("run", "--memory-cap", "1200MiB", "--run-dir", str(run_dir), "--", "accelerate", "launch",
                       "--num_processes", "1", "--cpu", str(tmp_path / "missing.py"), cwd=tmp_path,
                       env=with_venv(env))
    assert result.returncode == 3, result.stdout + result.stderr
    failure = view_of(run_dir).attempts[0].failure
    assert not failure.is_memory and "CalledProcessError" in failure.summary


@pytest.mark.parametrize("runner", ["papermill", "nbconvert"])
def test_a_notebook_runs_again_on_the_new_plan_from_where_it_stopped(tmp_path, relaunch_env, hub, runner):
    """The kernel papermill (or `jupyter nbconvert --execute`) starts trains under the cap. Its OOM in step 3 is
    relaunched (in-place recovery off: `relaunch_env`): the notebook is executed again from the top, the plan
    reaching its TrainingArguments, and its Trainer resumes after step 2."""
    run_dir, steps = tmp_path / "run", tmp_path / "steps"
    parameters = {"model_dir": f"{hub}/model", "data_dir": f"{hub}/data", "output_dir": str(tmp_path / "out"),
                  "steps_log": str(steps)}
    if runner == "papermill":
        notebook_tiny.write(tmp_path / "finetune.ipynb")
        given = [x for name, value in parameters.items() for x in ("-p", name, value)]
        command = ["papermill", "finetune.ipynb", "out.ipynb", *given]
    else:  # nbconvert takes no parameters: the notebook holds them
        notebook_tiny.write(tmp_path / "finetune.ipynb", **parameters)
        command = ["jupyter", "nbconvert", "--to", "notebook", "--execute", "finetune.ipynb", "--output", "out.ipynb"]
    result = oomladder("run", "--memory-cap", "1200MiB", *halving(tmp_path), "--run-dir", str(run_dir), "--",
                       *command, cwd=tmp_path, env=with_venv(relaunch_env))
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    first, last = view.attempts
    assert first.failure.is_memory and first.peak_measure == CAPPED and last.resumed_from == 2
    assert (last.plan.per_device_train_batch_size, last.plan.effective_batch) == (8, 16)
    assert steps_by_process(steps) == [[1, 2], [3, 4]]  # two kernels, the notebook's own record
    assert_each_step_ran_once(steps, 4)
    assert view.facts.notebook == "finetune.ipynb"
    assert "- notebook: `finetune.ipynb`" in (run_dir / "report.md").read_text()
    executed = json.loads((tmp_path / "out.ipynb").read_text())  # the last execution, with its outputs
    assert "effective batch 16" in "".join("".join(o.get("text", "")) for o in executed["cells"][-1]["outputs"])
    assert processes_of(run_dir) == []
