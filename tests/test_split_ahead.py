"""Split ahead: the running step's memory model (worker/recovery/step_memory.py) and the split it chooses before each
micro-step (worker/recovery/ahead.py, worker/in_place.py). The model predicts a micro-step's memory over what is held
from the estimator's terms, fitted to what the steps measured; an OOM is a lower bound; a batch that fits runs whole, a
long one in the fewest chunks that fit, for that step alone. tests/e2e/test_in_place.py and benchmarks/split_ahead.py
run it on real workers under a real cap."""

import pytest

from oomladder.worker.recovery import ahead, in_place, step_memory
from oomladder.worker.recovery.step_memory import StepMemory
from oomladder.worker.state import STATE

MiB = 1 << 20


def tokens(rows, seq):
    return float(rows * seq)


def test_an_unseeded_model_says_nothing_until_it_has_measured_a_step():
    model = StepMemory(feature=tokens, seeded=False)
    assert model.predict(8, 64) is None
    model.observe(8, 64, 512 * 1024)  # 1 KiB per token
    assert model.predict(16, 64) == 1024 * 1024


def test_the_fit_separates_what_grows_with_the_tokens_from_what_does_not():
    model = StepMemory(feature=tokens, seeded=False)
    for rows in (2, 4, 8):
        model.observe(rows, 100, 10 * MiB + rows * 100 * 1000)  # 10 MiB fixed, 1000 bytes a token
    assert model.c == pytest.approx(10 * MiB, rel=1e-6) and model.k == pytest.approx(1000, rel=1e-6)
    assert model.predict(16, 100) == pytest.approx(10 * MiB + 1_600_000, rel=1e-6)


def test_an_oom_is_a_lower_bound_and_a_miss_widens_the_margin():
    model = StepMemory(feature=tokens, seeded=True)  # k=1, c=0: the estimator's word
    assert model.predict(4, 256) == 1024 and model.fits(4, 256, 2048)
    model.ran_out(4, 256, available=100 * 1024, predicted=1024)  # it said 1 KiB, it needed more than 100 KiB
    assert model.predict(4, 256) >= 100 * 1024
    assert model.margin > step_memory.MARGIN
    assert not model.fits(4, 256, 100 * 1024)


def test_a_seeded_model_keeps_the_estimators_slope_and_takes_what_it_left_out_as_a_constant():
    """Steps all of one length measure what the estimate left out, not how it grows: a long step must not be
    predicted as if the short steps' fixed costs grew with its tokens."""
    model = StepMemory(feature=tokens, seeded=True)
    model.observe(16, 32, 512 + 4096)  # the estimate said 512; 4 KiB more that does not grow with the tokens
    assert (model.k, model.c) == (1.0, 4096) and model.margin == step_memory.MARGIN
    assert model.predict(16, 256) == 4096 + 4096  # not 9x the short step's ratio
    over = StepMemory(feature=tokens, seeded=True)
    over.observe(16, 32, 256)  # the estimate was twice too high: its slope is lowered to what was measured
    assert over.k == 0.5 and over.predict(16, 256) == 2048


def test_the_first_steps_one_time_allocations_are_not_kept_as_a_constant():
    """The first micro-step also allocates what every later one finds held. Kept, it would raise every prediction
    by as much, and split steps that fit whole."""
    model = StepMemory(feature=tokens, seeded=True)
    model.observe(16, 32, 512 + 90 * MiB)  # the first step: the estimate's 512 and 90 MiB allocated once
    assert model.predict(16, 32) == 512 + 90 * MiB  # all it knows yet
    model.observe(16, 64, 1024 + MiB)  # the next step, another length
    assert model.predict(16, 32) == 512 + MiB and model.predict(16, 64) == 1024 + MiB


def test_a_shape_measured_again_is_predicted_from_its_latest_measurement():
    model = StepMemory(feature=tokens, seeded=True)
    for extra in (512 + 4 * MiB, 512 + 8 * MiB, 512 + 2 * MiB):  # the first is the warm-up; then 8 MiB, then 2 MiB
        model.observe(16, 32, extra)
    assert model.predict(16, 32) == 512 + 2 * MiB and len(model.samples) == 1


@pytest.fixture
def capped(monkeypatch):
    """A device with `room` bytes left, as memcap.available says it."""
    room = {"bytes": 0}
    monkeypatch.setattr(ahead.memcap, "available", lambda: room["bytes"])
    monkeypatch.delenv("OOMLADDER_SPLIT_AHEAD", raising=False)
    return room


def test_the_fewest_chunks_that_fit_are_chosen_and_a_batch_that_fits_runs_whole(capped):
    model = StepMemory(feature=tokens, seeded=False)
    model.observe(1, 100, 100_000)  # 1000 bytes a token
    shapes = lambda pieces: (16 // pieces, 100)  # noqa: E731
    capped["bytes"] = 2_000_000  # 16 rows of 100 tokens need 1.6 MB: whole
    assert ahead.choose(model, shapes, [1, 2, 4, 8, 16]).pieces == 1
    capped["bytes"] = 700_000    # 8 rows need 800 kB, 4 rows 400 kB: 4 chunks
    choice = ahead.choose(model, shapes, [1, 2, 4, 8, 16])
    assert (choice.pieces, choice.rows, choice.predicted, choice.available) == (4, 4, 400_000, 700_000)
    capped["bytes"] = 10         # nothing fits: the finest split, and in-place recovery takes it from there
    assert ahead.choose(model, shapes, [1, 2, 4, 8, 16]).pieces == 16


def test_switched_off_or_unbounded_nothing_is_chosen(capped, monkeypatch):
    model = StepMemory(feature=tokens, seeded=True)
    capped["bytes"] = None  # the CPU without a cap: nothing to size against
    assert ahead.choose(model, lambda p: (8, 64), [1, 2]) is None
    capped["bytes"] = 1
    monkeypatch.setenv("OOMLADDER_SPLIT_AHEAD", "0")  # --no-split-ahead
    assert ahead.choose(model, lambda p: (8, 64), [1, 2]) is None


def test_a_step_sized_ahead_runs_split_and_leaves_the_runs_split_alone(capped, monkeypatch, tmp_path):
    monkeypatch.setenv("OOMLADDER_ATTEMPT_DIR", str(tmp_path))
    monkeypatch.delenv("OOMLADDER_IN_PLACE", raising=False)
    monkeypatch.setattr(STATE, "split", 1)
    model = StepMemory(feature=tokens, seeded=False)
    model.observe(1, 10, 10_000)
    capped["bytes"] = 50_000  # 8 rows of 10 need 80 kB: 2 chunks of 4 (40 kB) fit
    ran = []
    where = in_place.Step(step=1, rows=8, seq=10, batch=8, memory=model, shapes=lambda p: (8 // p, 10))
    assert in_place.recover(lambda pieces: ran.append(pieces) or "done", [], where, lambda exc: False) == "done"
    assert ran == [2] and STATE.split == 1
    assert ahead.take(1)["split_ahead"] == 2
    capped["bytes"] = 200_000  # the next step fits whole
    ran.clear()
    in_place.recover(lambda pieces: ran.append(pieces), [], in_place.Step(step=2, rows=8, seq=10, batch=8, memory=model,
                                                                       shapes=lambda p: (8 // p, 10)), lambda e: False)
    assert ran == [1]


def test_no_split_ahead_reaches_the_worker_and_a_per_step_split_leaves_the_plan(tmp_path):
    from oomladder.plan import Plan
    from oomladder.process.launch import worker_env
    from oomladder.record.history import fold
    attempt = tmp_path / "attempts" / "001"
    assert worker_env({}, attempt, Plan(), Plan(), None, split_ahead=False)["OOMLADDER_SPLIT_AHEAD"] == "0"
    assert "OOMLADDER_SPLIT_AHEAD" not in worker_env({}, attempt, Plan(), Plan(), None)
    assert worker_env({"OOMLADDER_SPLIT_AHEAD": "0"}, attempt, Plan(), Plan(), None)["OOMLADDER_SPLIT_AHEAD"] == "0"
    plan = {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1}
    records = [{"type": "run_started", "ts": 0, "command": ["t"], "ladder": {"source": "x", "rungs": []}},
               {"type": "attempt_started", "ts": 1, "attempt": 1, "plan": plan, "overrides": {}},
               {"type": "in_place", "ts": 2, "attempt": 1, "outcome": "split", "step": 3, "split": 2, "per_step": True}]
    view = fold(records)
    assert view.attempts[0].plan.per_device_train_batch_size == 16  # sized for that step alone


def test_the_report_says_what_split_ahead_did_and_how_close_its_predictions_were():
    from oomladder.record.history import fold
    from oomladder.views.markdown import render_markdown
    from oomladder.views.report import build_report
    plan = {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1}
    step = {"type": "progress", "ts": 3, "attempt": 1, "executed": True, "max_steps": 3}
    records = [{"type": "run_started", "ts": 0, "command": ["python", "train.py", "--per_device_train_batch_size",
                                                            "16"],
                "ladder": {"source": "x", "rungs": []}},
               {"type": "attempt_started", "ts": 1, "attempt": 1, "plan": plan, "overrides": {},
                "command": ["python", "train.py", "--per_device_train_batch_size", "16"]},
               {"type": "observed", "ts": 1, "attempt": 1, "plan": plan, "facts": {"reads_flags": True}},
               {**step, "step": 1, "split_ahead": 1, "predicted": 110, "measured": 100},
               {**step, "step": 2, "split_ahead": 2, "predicted": 90, "measured": 100},
               {**step, "step": 3, "split_ahead": 2, "predicted": 100, "measured": 100},
               {"type": "attempt_ended", "ts": 4, "attempt": 1, "outcome": "finished", "exit_code": 0},
               {"type": "run_ended", "ts": 4, "status": "finished", "exit_code": 0}]
    report = build_report(fold(records))
    assert report["split_ahead"] == {"steps_split": 2, "widest": 2, "predictions": 3, "error_median": 0.0,
                                     "error_worst": 0.1, "mispredictions": 0}
    assert "- split ahead: 2 steps ran in chunks (up to 2), sized before they ran" in render_markdown(report)
    # Without oomladder nothing sizes the steps: the command to run is the plan that fits every step.
    assert "--per_device_train_batch_size 8" in report["reproduce"]["command"]
    assert report["reproduce"]["command_note"].startswith("oomladder sized each step and ran the longest in 2 chunks")
