"""No optimizer step lost or repeated: a run that hits an OOM at step 3 continues from the end of
step 2 on the next plan, and it is the same training as one that ran steps 1-2 on the first plan
and steps 3-6 on the final one without oomladder. Checked against the program's own record of the
steps it ran, and shown to fail when the worker does not resume. The relaunch's promise, so with in-place recovery
off (`relaunch_env`); the same promise in place is tests/e2e/test_in_place.py's."""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from oomladder.record.history import fold
from oomladder.record.journal import read_journal
from tests.conftest import processes_of
from tests.e2e.ledger import assert_each_step_ran_once, steps_by_process
from tests.e2e.test_recovery import TRAIN_TINY, oomladder

pytestmark = pytest.mark.e2e


def per_step(view, key):
    """Each completed step's value, from the attempt that completed it."""
    values = {}
    for attempt in view.attempts:
        for record in attempt_progress(view, attempt.number):
            if record.get(key) is not None and record["step"] in attempt.steps:
                values[record["step"]] = record[key]
    return values


def attempt_progress(view, number):
    return [r for r in view.records if r["type"] == "progress" and r["attempt"] == number and "step" in r]


def run(tmp_path, name, *args, env, program=(), model=None):
    run_dir = tmp_path / name
    command = [sys.executable, str(TRAIN_TINY), "--model-dir", str(model or tmp_path / "model"),
               "--output-dir", str(tmp_path / f"{name}-out"), "--max-steps", "6",
               "--save-final", str(tmp_path / f"{name}-final"), "--count-steps", str(tmp_path / f"{name}.steps"),
               *program]
    result = oomladder("run", "--run-dir", str(run_dir), *args, "--", *command, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    records = read_journal(run_dir / "journal.jsonl")
    view = fold(records)
    view.records = records
    return run_dir, view


def halving(tmp_path):
    (tmp_path / "halve.yaml").write_text("rungs: [halve_batch]\n")
    return ("--ladder", str(tmp_path / "halve.yaml"))


def adapters(folder):
    return load_file(folder / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def continuous(tmp_path_factory, env):
    """The training the recovered run must equal, without oomladder's checkpoints: steps 1-2 on the first plan
    (fp32, batch 16), the Trainer's own checkpoint at step 2, and steps 3-6 on the plan the recovery ends on
    (batch 8 x accumulation 2, on a ladder of halve_batch: bf16 on a CPU is minutes per step), resumed by the
    Trainer itself. The learning-rate schedule is the one of
    a 6-step run throughout. Each phase runs under oomladder with no cap, only for its journal's numbers."""
    tmp = tmp_path_factory.mktemp("continuous")
    _, first = run(tmp, "first", env=env, program=("--save-steps", "2", "--stop-after-step", "2"))
    _, second = run(tmp, "second", env=env, program=(
        "--batch-size", "8", "--grad-accum", "2", "--output-dir", str(tmp / "first-out"),
        "--resume-from", str(tmp / "first-out" / "checkpoint-2")))
    assert steps_by_process(tmp / "first.steps") == [[1, 2]] and steps_by_process(tmp / "second.steps") == [[3, 4, 5,
                                                                                                             6]]
    return {"adapters": adapters(tmp / "second-final"), "model": tmp / "model",
            "learning_rate": {**per_step(first, "learning_rate"), **per_step(second, "learning_rate")}}


def test_every_step_runs_once_and_the_recovered_run_is_the_continuous_training(tmp_path, relaunch_env, continuous):
    run_dir, recovered = run(tmp_path, "recovered", "--memory-cap", "1200MiB", *halving(tmp_path), env=relaunch_env,
                             model=continuous["model"])
    # What the program itself did: steps 1-2 in the first process, 3-6 in the second, each once.
    assert steps_by_process(tmp_path / "recovered.steps") == [[1, 2], [3, 4, 5, 6]]
    assert_each_step_ran_once(tmp_path / "recovered.steps", 6)
    first, second = recovered.attempts
    final = second.plan
    assert (final.per_device_train_batch_size, final.gradient_accumulation_steps, final.precision) == (8, 2, "fp32")
    assert first.failure.is_memory and first.steps_run == (1, 2)
    assert second.resumed and second.began_at == 2 and second.steps_run == (3, 6)
    assert recovered.repeated_steps == [] and recovered.ended.reason.startswith("every step ran once")
    assert not list((run_dir / "checkpoints").iterdir())  # the emergency checkpoint went with the finished run
    # The report says where each attempt resumed.
    report = json.loads((run_dir / "report.json").read_text())
    assert [(a["resumed_from_step"], a["steps_run"]) for a in report["attempts"]] == [(None, [1, 2]), (2, [3, 6])]
    assert "resumed from the end of step 2" in (run_dir / "report.md").read_text()

    # The same training, bit for bit: a lost or repeated step, or a resume that restored anything differently
    # (optimizer moments, scheduler, data position), changes the adapters.
    ours, theirs = adapters(tmp_path / "recovered-final"), continuous["adapters"]
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # The schedule continues where it stopped: the same learning rate at every step.
    assert per_step(recovered, "learning_rate") == continuous["learning_rate"]
    assert sorted(continuous["learning_rate"]) == [1, 2, 3, 4, 5, 6]
    assert processes_of(run_dir) == []


def test_a_worker_that_does_not_resume_fails_the_checks_and_the_report_says_so(tmp_path, relaunch_env, continuous):
    """The checks above can fail: with resume switched off in the worker (a test-only switch standing for a
    broken resume), the second attempt trains from scratch, and the program's record, the adapters, the
    table and the report all show it."""
    run_dir, sabotaged = run(tmp_path, "sabotaged", "--memory-cap", "1200MiB", *halving(tmp_path),
                             model=continuous["model"],
                             env={**relaunch_env, "_OOMLADDER_TEST_SKIP_RESUME": "1"})
    assert steps_by_process(tmp_path / "sabotaged.steps") == [[1, 2], [1, 2, 3, 4, 5, 6]]
    with pytest.raises(AssertionError):
        assert_each_step_ran_once(tmp_path / "sabotaged.steps", 6)
    ours = adapters(tmp_path / "sabotaged-final")
    assert not all(torch.equal(ours[k], continuous["adapters"][k]) for k in ours)

    second = sabotaged.attempts[1]
    assert second.resumed_from == 2 and second.began_at == 0 and second.ran_again == [1, 2]
    assert sabotaged.repeated_steps == [1, 2]
    assert "ran more than once" in sabotaged.ended.reason and "every step ran" not in sabotaged.ended.reason
    warning = next(r for r in sabotaged.records if r["type"] == "warning" and r.get("about") != "cpu_cap")
    assert warning["text"].startswith("attempt 2 did not resume: asked to resume from the end of step 2")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["steps"]["repeated"] == [[1, 2]]
    assert report["attempts"][1]["steps_text"] == "1–6 (1–2 again; did not resume)"
    assert "1–2 ran more than once" in (run_dir / "report.md").read_text()


def test_an_oom_in_evaluation_changes_the_evaluation_only_and_the_evaluation_still_happens(tmp_path, env):
    run_dir = tmp_path / "eval"
    result = oomladder("run", "--run-dir", str(run_dir), "--memory-cap", "1200MiB", "--", sys.executable,
                       str(TRAIN_TINY), "--model-dir", str(tmp_path / "model"), "--output-dir", str(tmp_path / "o"),
                       "--long-len", "32", "--eval-len", "512", "--eval-steps", "3", "--count-steps",
                       str(tmp_path / "steps"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    records = read_journal(run_dir / "journal.jsonl")
    view = fold(records)
    assert view.attempts[0].failure.phase == "eval" and view.attempts[0].failure.is_memory
    assert {a.rung for a in view.attempts[1:]} == {"halve_eval_batch"}
    assert {(a.plan.per_device_train_batch_size, a.plan.gradient_accumulation_steps) for a in view.attempts} == {(16,
                                                                                                                  1)}
    assert view.final_plan.per_device_eval_batch_size < 16
    ranges = [a.steps_run for a in view.attempts if a.steps_run]
    assert [s for first, last in ranges for s in range(first, last + 1)] == [1, 2, 3, 4, 5, 6]
    assert_each_step_ran_once(tmp_path / "steps", 6)
    # Each evaluation completed once, at its own step, whichever attempt completed it: the one an OOM
    # cut short ran on resume before training went on.
    evaluated = [r["step"] for r in records if r["type"] == "progress" and r.get("phase") == "eval"]
    assert evaluated == [3, 6]
