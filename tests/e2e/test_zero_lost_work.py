"""No optimizer step lost or repeated: a run that hits an OOM at step 3 continues from the end of
step 2 on the next plan, and it is the same training as a run on that plan from the start."""

import json
import sys

import pytest
from oomladder.record.history import fold
from oomladder.record.journal import read_journal
from safetensors.torch import load_file

from tests.conftest import processes_of
from tests.e2e.test_recovery import TRAIN_TINY, oomladder

pytestmark = pytest.mark.e2e


def per_step(view, key):
    """Each completed step's value, from the attempt that completed it."""
    values = {}
    for attempt in view.attempts:
        for record in attempt_progress(view, attempt.number):
            if record.get(key) is not None and record["step"] <= (attempt.steps_run or (0, 0))[1]:
                values[record["step"]] = record[key]
    return values


def attempt_progress(view, number):
    return [r for r in view.records if r["type"] == "progress" and r["attempt"] == number and "step" in r]


def run(tmp_path, name, *args, env):
    run_dir = tmp_path / name
    command = [sys.executable, str(TRAIN_TINY), "--model-dir", str(tmp_path / "model"),
               "--output-dir", str(tmp_path / f"{name}-out"), "--max-steps", "6",
               "--save-final", str(tmp_path / f"{name}-final")]
    result = oomladder("run", "--run-dir", str(run_dir), *args, "--", *command, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    records = read_journal(run_dir / "journal.jsonl")
    view = fold(records)
    view.records = records
    return run_dir, view


def test_every_step_runs_once_and_the_recovered_run_is_the_same_training(tmp_path, env):
    (tmp_path / "halve.yaml").write_text("rungs: [halve_batch]\n")
    run_dir, recovered = run(tmp_path, "recovered", "--memory-cap", "1200MiB", "--ladder", "halve.yaml", env=env)
    first, second = recovered.attempts
    assert first.failure.is_memory and first.steps_run == (1, 2)
    assert second.resumed_from == 2 and second.steps_run == (3, 6)
    assert second.plan.per_device_train_batch_size == 8 and second.plan.gradient_accumulation_steps == 2
    assert not list((run_dir / "checkpoints").iterdir())  # the emergency checkpoint went with the finished run

    _, direct = run(tmp_path, "direct", "--set", "per_device_train_batch_size=8",
                    "--set", "gradient_accumulation_steps=2", env=env)
    assert len(direct.attempts) == 1

    # The trained adapters are the same. One Adam step moves each LoRA weight by about the learning
    # rate (1e-3 here), so a lost or repeated step shows as differences near 1e-3; what the two runs
    # may differ by is float summation order (one micro-batch of 16 against two of 8 in steps 1-2):
    # measured here, nothing at all (bit-identical adapters).
    ours = load_file(tmp_path / "recovered-final" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "direct-final" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    worst = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
    assert worst < 1e-4, worst

    # The schedule continues where it stopped: the same learning rate at every step.
    assert per_step(recovered, "learning_rate") == per_step(direct, "learning_rate")
    assert sorted(per_step(recovered, "learning_rate")) == [1, 2, 3, 4, 5, 6]
    # And each step's loss, on the same samples, agrees to float summation order (measured: 4e-5 relative).
    ours, theirs = per_step(recovered, "loss"), per_step(direct, "loss")
    assert sorted(ours) == sorted(theirs) == [1, 2, 3, 4, 5, 6]
    for step in ours:
        assert ours[step] == pytest.approx(theirs[step], rel=1e-3), step
    assert processes_of(run_dir) == []


def test_the_report_shows_where_each_attempt_resumed(tmp_path, env):
    (tmp_path / "halve.yaml").write_text("rungs: [halve_batch]\n")
    run_dir, _ = run(tmp_path, "r", "--memory-cap", "1200MiB", "--ladder", "halve.yaml", env=env)
    report = json.loads((run_dir / "report.json").read_text())
    assert [(a["resumed_from_step"], a["steps_run"]) for a in report["attempts"]] == [(None, [1, 2]), (2, [3, 6])]
    assert "resumed from the end of step 2" in (run_dir / "report.md").read_text()


def test_an_oom_in_evaluation_changes_the_evaluation_only_and_the_evaluation_still_happens(tmp_path, env):
    run_dir = tmp_path / "eval"
    result = oomladder("run", "--run-dir", str(run_dir), "--memory-cap", "1200MiB", "--", sys.executable,
                       str(TRAIN_TINY), "--model-dir", str(tmp_path / "model"), "--output-dir", str(tmp_path / "o"),
                       "--long-len", "32", "--eval-len", "512", "--eval-steps", "3", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    records = read_journal(run_dir / "journal.jsonl")
    view = fold(records)
    assert view.attempts[0].failure.phase == "eval" and view.attempts[0].failure.is_memory
    assert {a.rung for a in view.attempts[1:]} == {"halve_eval_batch"}
    assert {(a.plan.per_device_train_batch_size, a.plan.gradient_accumulation_steps) for a in view.attempts} == {(16, 1)}
    assert view.final_plan.per_device_eval_batch_size < 16
    ranges = [a.steps_run for a in view.attempts if a.steps_run]
    assert [s for first, last in ranges for s in range(first, last + 1)] == [1, 2, 3, 4, 5, 6]
    # Each evaluation completed once, at its own step, whichever attempt completed it: the one an OOM
    # cut short ran on resume before training went on.
    evaluated = [r["step"] for r in records if r["type"] == "progress" and r.get("phase") == "eval"]
    assert evaluated == [3, 6]
