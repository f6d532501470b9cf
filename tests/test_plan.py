import dataclasses

import pytest

from oomladder.plan import Plan, coerce_field, describe_changes


def test_a_plan_is_immutable():
    plan = Plan(per_device_train_batch_size=16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.per_device_train_batch_size = 8  # type: ignore[misc]


def test_effective_batch_is_batch_times_accumulation_times_world():
    assert Plan(per_device_train_batch_size=8, gradient_accumulation_steps=2).effective_batch == 16
    assert Plan(per_device_train_batch_size=8, gradient_accumulation_steps=2, world_size=4).effective_batch == 64
    assert Plan(per_device_train_batch_size=8).effective_batch is None


def test_merging_takes_only_the_fields_the_other_plan_sets():
    program = Plan(per_device_train_batch_size=16, gradient_accumulation_steps=1, precision="fp32", world_size=2)
    merged = program.merged(Plan(precision="bf16"))
    assert merged == program.replace(precision="bf16")
    assert merged.world_size == 2


def test_changes_read_like_the_seed_note():
    before = Plan(per_device_train_batch_size=16, gradient_accumulation_steps=1)
    after = before.replace(per_device_train_batch_size=8, gradient_accumulation_steps=2)
    assert describe_changes(before, after) == "per_device_train_batch_size 16→8, gradient_accumulation_steps 1→2"
    assert describe_changes(before, before) == "-"


def test_plans_survive_the_journal_round_trip():
    plan = Plan(per_device_train_batch_size=4, precision="bf16", quantization="int8", gradient_checkpointing=True)
    assert Plan.from_dict(plan.to_dict()) == plan
    assert Plan.from_dict({"per_device_train_batch_size": 2, "from_a_newer_version": 1}) == Plan(
        per_device_train_batch_size=2)


@pytest.mark.parametrize("name, text, value", [
    ("per_device_train_batch_size", "16", 16), ("gradient_checkpointing", "true", True),
    ("dataloader_num_workers", "0", 0), ("precision", "bf16", "bf16"), ("quantization", "nf4", "nf4"),
])
def test_set_values_are_typed(name, text, value):
    assert coerce_field(name, text) == value


@pytest.mark.parametrize("name, text, message", [
    ("batch", "16", "not a plan setting"), ("per_device_train_batch_size", "0", "at least 1"),
    ("per_device_train_batch_size", "many", "whole number"), ("precision", "fp8", "must be one of"),
])
def test_bad_set_values_say_what_is_accepted(name, text, message):
    with pytest.raises(ValueError, match=message):
        coerce_field(name, text)
