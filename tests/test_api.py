"""The public API for plain PyTorch programs (`from oomladder import api`), outside oomladder: the plan is what the
program gave, and the session saves nothing, so the same program runs the same with or without oomladder."""

import pytest
import torch

from oomladder import api
from oomladder.plan import Plan


def test_without_oomladder_the_plan_is_the_programs_own(monkeypatch):
    monkeypatch.delenv("OOMLADDER_ATTEMPT_DIR", raising=False)
    plan = api.plan(per_device_train_batch_size=16, gradient_accumulation_steps=2, precision="fp32")
    assert (plan.per_device_train_batch_size, plan.gradient_accumulation_steps, plan.precision) == (16, 2, "fp32")
    assert plan.effective_batch == 32


def test_the_plan_is_the_supervisors_own_and_its_effective_batch_counts_every_process(monkeypatch):
    monkeypatch.delenv("OOMLADDER_ATTEMPT_DIR", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    plan = api.plan(per_device_train_batch_size=8, gradient_accumulation_steps=2)
    assert api.Plan is Plan and isinstance(plan, Plan)
    assert (plan.world_size, plan.effective_batch) == (4, 64)


def test_without_oomladder_a_session_starts_at_step_0_and_saves_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv("OOMLADDER_ATTEMPT_DIR", raising=False)
    model = torch.nn.Linear(2, 2)
    session = api.session(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert session.resume() == 0
    session.step_done(1)
    assert list(tmp_path.iterdir()) == []


def test_a_setting_oomladder_does_not_know_is_refused_by_name():
    with pytest.raises(TypeError, match="not batch"):
        api.plan(batch=16)


def test_a_session_needs_objects_with_a_state():
    with pytest.raises(TypeError, match="data has no state_dict"):
        api.session(data=[1, 2, 3])
