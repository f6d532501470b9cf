import dataclasses

import pytest

from oomladder.plan import (
    FIELD_NAMES,
    LOAD_DTYPES,
    PRECISIONS,
    QUANTIZATIONS,
    Facts,
    Plan,
    coerce_field,
    describe_changes,
)


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


def test_a_plan_or_facts_nobody_observed_set_nothing():
    assert Plan().set_fields() == {} and Plan().effective_batch is None
    assert set(Facts().to_dict().values()) == {None}
    assert Facts.from_dict(None) == Facts() and Plan.from_dict(None) == Plan()


def test_facts_are_immutable_too():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Facts().device = "cuda"  # type: ignore[misc]


@pytest.mark.parametrize("name, choices", [("precision", PRECISIONS), ("load_dtype", LOAD_DTYPES),
                                           ("quantization", QUANTIZATIONS)])
def test_every_choice_of_a_setting_with_choices_is_accepted_by_set_and_nothing_else(name, choices):
    assert [coerce_field(name, choice) for choice in choices] == list(choices)
    with pytest.raises(ValueError, match=f"{name} must be one of {', '.join(choices)}, not 'fp8'"):
        coerce_field(name, "fp8")


def test_the_choices_are_the_ones_the_trainer_and_from_pretrained_take():
    assert PRECISIONS == ("fp32", "bf16", "fp16")
    assert LOAD_DTYPES == ("float32", "bfloat16", "float16", "auto")
    assert QUANTIZATIONS == ("none", "int8", "nf4")


def test_a_setting_the_program_left_unset_reads_unset_in_a_change():
    assert describe_changes(Plan(), Plan(precision="bf16")) == "precision unset→bf16"


@pytest.mark.parametrize("text, value", [("true", True), ("1", True), ("yes", True), ("True", True),
                                         ("false", False), ("0", False), ("no", False), ("NO", False)])
def test_gradient_checkpointing_takes_the_usual_spellings_of_yes_and_no(text, value):
    assert coerce_field("gradient_checkpointing", text) is value


@pytest.mark.parametrize("name, text", [("optim", "paged_adamw_8bit"), ("allocator", "expandable_segments:True")])
def test_the_optimizer_and_the_allocator_setting_are_taken_as_written(name, text):
    assert coerce_field(name, text) == text


@pytest.mark.parametrize("name, text, message", [
    ("batch", "16", "'batch' is not a plan setting (settings: " + ", ".join(FIELD_NAMES) + ")"),
    ("precision", "fp8", "precision must be one of fp32, bf16, fp16, not 'fp8'"),
    ("gradient_checkpointing", "maybe", "gradient_checkpointing must be true or false, not 'maybe'"),
    ("per_device_train_batch_size", "many", "per_device_train_batch_size must be a whole number, not 'many'"),
    ("per_device_train_batch_size", "0", "per_device_train_batch_size must be at least 1, not 0"),
    ("dataloader_num_workers", "-1", "dataloader_num_workers must be at least 0, not -1"),
])
def test_a_bad_set_value_is_told_in_one_whole_sentence(name, text, message):
    with pytest.raises(ValueError) as raised:
        coerce_field(name, text)
    assert str(raised.value) == message
