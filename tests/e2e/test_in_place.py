"""In-place recovery end to end: real Trainer workers under a real memory cap, real CPU OOMs met inside the running
process by splitting the step's micro-batch. No relaunch, every step once (the program's own record), the
learning rate of every step and the trained adapters those of a direct run of the plan the split equals, on data
shaped as tutorials shape it (ragged rows padded to a fixed length, labels on the padding too); the people who
asked to hear of fallbacks hear of it, and so does the program's own tracker; and a program whose loss cannot be
split is relaunched, with the reason in the report."""

import json
import sys

import pytest
import torch

from tests.e2e.ledger import assert_each_step_ran_once, steps_by_process
from tests.e2e.test_frameworks import TRL_SFT
from tests.e2e.test_recovery import oomladder, view_of
from tests.e2e.test_zero_lost_work import adapters, halving, per_step, run
from tests.webhook import Webhook

pytestmark = pytest.mark.e2e
# Ragged rows padded to a fixed width, labels = input_ids on the padding too: a split must keep every labelled column.
TUTORIAL_DATA = ("--labels-on-padding",)


@pytest.fixture(scope="module")
def equivalent(tmp_path_factory, env):
    """The training a split at step 3 must equal, without oomladder's help: steps 1-2 at batch 16, the Trainer's
    own checkpoint, then steps 3-6 at batch 8 x accumulation 2 resumed by the Trainer itself, in fp32."""
    tmp = tmp_path_factory.mktemp("equivalent")
    _, first = run(tmp, "first", env=env, program=("--save-steps", "2", "--stop-after-step", "2", *TUTORIAL_DATA))
    _, second = run(tmp, "second", env=env, program=(
        "--batch-size", "8", "--grad-accum", "2", "--output-dir", str(tmp / "first-out"),
        "--resume-from", str(tmp / "first-out" / "checkpoint-2"), *TUTORIAL_DATA))
    assert steps_by_process(tmp / "second.steps") == [[3, 4, 5, 6]]
    return {"adapters": adapters(tmp / "second-final"), "model": tmp / "model",
            "learning_rate": {**per_step(first, "learning_rate"), **per_step(second, "learning_rate")}}


def test_a_mid_run_oom_is_recovered_in_place_and_is_the_training_of_the_equivalent_plan(tmp_path, env, equivalent):
    """The safety net: with split ahead off, the step that runs out of memory is split after the OOM."""
    with Webhook() as hook:
        run_dir, view = run(tmp_path, "in-place", "--memory-cap", "1200MiB", "--no-split-ahead", "--notify", hook.url,
                            env=env, model=equivalent["model"],
                            program=(*TUTORIAL_DATA, "--report-to", "tensorboard"))
        messages = hook.wait_for(2)
    # One process ran every step once: no relaunch.
    assert steps_by_process(tmp_path / "in-place.steps") == [[1, 2, 3, 4, 5, 6]]
    assert_each_step_ran_once(tmp_path / "in-place.steps", 6)
    attempt, = view.attempts
    assert attempt.status == "finished" and attempt.failure is None
    record, = attempt.in_place
    assert (record.outcome, record.step, record.split_before, record.split) == ("split", 3, 1, 2)
    assert record.numbers["tried_to_allocate"] > 0 and record.peak > 0
    plan = attempt.plan  # the plan the split equals, which a relaunch would start from
    assert (plan.per_device_train_batch_size, plan.gradient_accumulation_steps, plan.effective_batch) == (8, 2, 16)
    assert view.ended.reason.startswith("every step ran once")
    # The same training: adapters within the tolerance of sums taken in another order, the same schedule.
    ours, theirs = adapters(tmp_path / "in-place-final"), equivalent["adapters"]
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)
    assert per_step(view, "learning_rate") == equivalent["learning_rate"]
    # Shown as a row without a process of its own, in the table and the report.
    report = json.loads((run_dir / "report.json").read_text())
    row, = report["attempts"][0]["in_place"]
    assert row["rung"] == "in place: split 2"
    assert row["status_text"] == "OOM in step 3/6: recovered in place, no relaunch"
    assert "|  | in place: split 2 |" in (run_dir / "report.md").read_text()
    # A fallback without a relaunch is news too: to the people watching, and in the program's own tracker.
    assert [m["title"] for m in messages] == ["oomladder: attempt 1 ran out of memory in step 3; recovered in place",
                                              "oomladder: training finished"]
    assert "now runs in 2 chunks" in messages[0]["message"] and "No relaunch." in messages[0]["message"]
    assert tracker_texts(tmp_path / "in-place-out" / "runs", "train/oomladder/rung/text_summary") == [
        (0, "attempt 1 from step 0: start: the program's own settings"),
        (3, "in place at step 3: out of memory; the micro-batch now runs in 2 chunks")]


def test_split_ahead_sizes_the_long_steps_before_they_run_and_trains_as_the_equivalent_plan(tmp_path, env, equivalent):
    """The default: each step sized before it runs. The long steps run in chunks from the start, with no OOM at
    all, the short ones whole, and the training is the equivalent plan's."""
    run_dir, view = run(tmp_path, "ahead", "--memory-cap", "1200MiB", env=env, model=equivalent["model"],
                        program=TUTORIAL_DATA)
    assert steps_by_process(tmp_path / "ahead.steps") == [[1, 2, 3, 4, 5, 6]]
    attempt, = view.attempts
    assert attempt.status == "finished" and attempt.failure is None and attempt.in_place == []  # no OOM at all
    assert attempt.plan.per_device_train_batch_size == 16  # the plan is the program's: each step is sized on its own
    report = json.loads((run_dir / "report.json").read_text())
    ahead = report["split_ahead"]
    assert ahead["steps_split"] == 4 and ahead["widest"] >= 2 and ahead["mispredictions"] == 0  # steps 3-6
    assert ahead["predictions"] == 6 and abs(ahead["error_median"]) < 0.5
    ours, theirs = adapters(tmp_path / "ahead-final"), equivalent["adapters"]
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)
    assert per_step(view, "learning_rate") == equivalent["learning_rate"]
    assert "split ahead" in (run_dir / "report.md").read_text()


def tracker_texts(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    found = []
    for events_dir in sorted(folder.iterdir()):
        events = EventAccumulator(str(events_dir), size_guidance={"tensors": 0})
        events.Reload()
        if tag in events.Tags()["tensors"]:
            found += [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors(tag)]
    return sorted(found)


def test_a_step_1_oom_in_trl_needs_no_relaunch(tmp_path, env):
    run_dir = tmp_path / "run"
    result = oomladder("run", "--memory-cap", "1200MiB", "--run-dir", str(run_dir), "--", sys.executable,
                       str(TRL_SFT), "--model-dir", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"),
                       "--count-steps", str(tmp_path / "steps"), "--batch-size", "16", "--max-steps", "2",
                       cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    attempt, = view.attempts  # no relaunch
    # Step 1 is split ahead on the estimator's word, or split after its OOM; no OOM after step 1 either way.
    assert all(r.outcome == "split" and r.step == 1 for r in attempt.in_place)
    assert attempt.in_place or attempt.ahead.steps_split >= 1
    assert attempt.plan.effective_batch == 16
    assert "= effective batch 16" in (run_dir / "attempts" / "001" / "stdout.log").read_text()
    assert_each_step_ran_once(tmp_path / "steps", 2)


def test_where_no_split_fits_checkpointing_is_turned_on_in_place_without_a_relaunch(tmp_path, env):
    """A long-sequence fine-tune (8 layers, 1024 tokens, batch 2) whose activations do not fit even a row at a time
    under the cap, while checkpointed both rows do: the ladder's checkpointing rung, taken in the same process."""
    run_dir = tmp_path / "run"
    result = oomladder("run", "--memory-cap", "180MiB", "--run-dir", str(run_dir), "--", sys.executable,
                       "-m", "oomladder.demo.train_tiny", "--model-dir", str(tmp_path / "model"), "--vocab", "2000",
                       "--layers", "8", "--long-len", "1024", "--grow-at-step", "1", "--batch-size", "2",
                       "--max-steps", "3", "--output-dir", str(tmp_path / "out"), "--count-steps",
                       str(tmp_path / "steps"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert steps_by_process(tmp_path / "steps") == [[1, 2, 3]]  # one process, every step once
    view = view_of(run_dir)
    attempt, = view.attempts
    record, = attempt.in_place
    assert (record.outcome, record.step, record.checkpointing) == ("split", 1, True)
    # Without checkpointing no split fits: 2 rows then 1 (or 1 at once, split ahead), then checkpointing on.
    assert [t.checkpointing for t in record.tries] == [False] * len(record.tries)
    # Each OOM's own numbers, the estimator's lower bounds: what was held when it struck, what it tried.
    assert record.tries[-1].rows == 1 and all(t.held > 0 and t.tried > 0 for t in record.tries)
    assert attempt.plan.gradient_checkpointing and attempt.plan.effective_batch == 2
    # The program's own model ran checkpointed, at its own batch.
    out = (run_dir / "attempts" / "001" / "stdout.log").read_text()
    assert "gradient checkpointing on; batch 2 x accumulation 1" in out
    assert "in place: gradient checkpointing" in (run_dir / "report.md").read_text()


def test_a_program_whose_loss_cannot_be_seen_into_is_relaunched_with_the_reason(tmp_path, env):
    run_dir, view = run(tmp_path, "own-loss", "--memory-cap", "1200MiB", *halving(tmp_path), env=env,
                        program=("--own-loss",))
    assert_each_step_ran_once(tmp_path / "own-loss.steps", 6)
    first = view.attempts[0]
    assert first.failure.is_memory and len(view.attempts) >= 2
    record, = first.in_place
    assert record.outcome == "declined" and "OwnLoss.compute_loss" in record.reason
    md = (run_dir / "report.md").read_text()
    assert "relaunched instead: the program's own compute_loss (OwnLoss.compute_loss)" in md
