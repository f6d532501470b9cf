"""Each rung: what it changes, and why it declines when it does not apply."""

import pytest

from oomladder import strategies
from oomladder.classify import Failure, Kind
from oomladder.errors import StrategyError
from oomladder.plan import Facts, Plan
from oomladder.strategies.base import Applied, Skipped

DEVICE_OOM = Failure(Kind.CUDA_OOM, "device", "CUDA out of memory", phase="train", step=2)
FRAGMENTED = Failure(Kind.CUDA_OOM, "device", "CUDA out of memory", numbers={
    "tried_to_allocate": 2**30, "reserved_unallocated": 4 * 2**30, "total_capacity": 24 * 2**30})
HOST_OOM = Failure(Kind.DATALOADER_KILLED, "host", "a DataLoader worker was killed")
EVAL_OOM = Failure(Kind.CUDA_OOM, "device", "CUDA out of memory", phase="eval", step=4)
PROGRAM = Plan(per_device_train_batch_size=16, gradient_accumulation_steps=1, per_device_eval_batch_size=16,
               precision="fp32", load_dtype="float32", quantization="none", gradient_checkpointing=False,
               dataloader_num_workers=4, optim="adamw_torch", allocator="", world_size=1)
LORA_ON_CUDA = Facts(device="cuda", bf16_supported=True, base_frozen=True)
FULL_ON_CUDA = Facts(device="cuda", bf16_supported=True, base_frozen=False)


def apply(name, plan=PROGRAM, facts=LORA_ON_CUDA, failure=DEVICE_OOM, **params):
    return strategies.get(name)(**params).apply(plan, facts, failure)


@pytest.mark.parametrize("name", strategies.available())
def test_every_strategy_keeps_the_effective_batch_and_explains_itself(name):
    """Run through the registry, as Composer tests its algorithms: no rung may change what is learned."""
    strategy = strategies.get(name)()
    for failure in (DEVICE_OOM, HOST_OOM, EVAL_OOM):
        for facts in (LORA_ON_CUDA, FULL_ON_CUDA, Facts(device="cpu", bf16_supported=True, base_frozen=True)):
            outcome = strategy.apply(PROGRAM, facts, failure)
            assert outcome.reason and "\n" not in outcome.reason
            if isinstance(outcome, Applied):
                assert outcome.plan.effective_batch == PROGRAM.effective_batch
                assert outcome.plan != PROGRAM


@pytest.mark.parametrize("name", strategies.available())
def test_every_strategy_skips_with_a_reason_when_the_plan_is_not_yet_known(name):
    outcome = strategies.get(name)().apply(Plan(), Facts(), DEVICE_OOM)
    assert isinstance(outcome, Skipped) and outcome.reason


def test_expandable_segments_is_a_cuda_rung():
    applied = apply("expandable_segments", failure=FRAGMENTED)
    assert applied.plan.allocator == "expandable_segments:True"
    assert "fragmentation" in applied.reason
    assert "cpu" in apply("expandable_segments", facts=Facts(device="cpu")).reason
    already = apply("expandable_segments", plan=PROGRAM.replace(allocator="expandable_segments:True"))
    assert isinstance(already, Skipped)


def test_expandable_segments_keeps_the_users_own_allocator_settings():
    applied = apply("expandable_segments", plan=PROGRAM.replace(allocator="max_split_size_mb:128"))
    assert applied.plan.allocator == "max_split_size_mb:128,expandable_segments:True"


def test_bf16_turns_on_autocast_and_loads_a_frozen_base_in_bf16():
    applied = apply("bf16")
    assert (applied.plan.precision, applied.plan.load_dtype) == ("bf16", "bfloat16")
    full = apply("bf16", facts=FULL_ON_CUDA)
    assert (full.plan.precision, full.plan.load_dtype) == ("bf16", "float32")  # fp32 master weights stay


def test_bf16_skips_where_it_has_nothing_to_do():
    assert "already" in apply("bf16", plan=PROGRAM.replace(precision="bf16", load_dtype="bfloat16")).reason
    assert "does not support bf16" in apply("bf16", facts=Facts(device="cuda", bf16_supported=False)).reason


def test_int8_only_where_adapters_train():
    applied = apply("int8")
    assert applied.plan.quantization == "int8"
    assert "BitsAndBytesConfig" in applied.reason
    assert "base weights train" in apply("int8", facts=FULL_ON_CUDA).reason
    assert "already" in apply("int8", plan=PROGRAM.replace(quantization="int8")).reason
    assert "already" in apply("int8", plan=PROGRAM.replace(quantization="nf4")).reason
    assert apply("nf4", plan=PROGRAM.replace(quantization="int8")).plan.quantization == "nf4"


def test_halve_batch_doubles_accumulation():
    applied = apply("halve_batch")
    assert (applied.plan.per_device_train_batch_size, applied.plan.gradient_accumulation_steps) == (8, 2)
    assert applied.plan.per_device_eval_batch_size == 16


def test_halve_batch_refuses_an_odd_batch_and_stops_at_its_floor():
    odd = apply("halve_batch", plan=PROGRAM.replace(per_device_train_batch_size=6 + 1))
    assert isinstance(odd, Skipped) and "odd" in odd.reason
    floor = apply("halve_batch", plan=PROGRAM.replace(per_device_train_batch_size=4), min_batch=4)
    assert isinstance(floor, Skipped) and "floor" in floor.reason
    assert apply("halve_batch", plan=PROGRAM.replace(per_device_train_batch_size=4), min_batch=2).plan \
        .per_device_train_batch_size == 2


def test_checkpointing_turns_on_once():
    assert apply("gradient_checkpointing").plan.gradient_checkpointing is True
    assert "already" in apply("gradient_checkpointing", plan=PROGRAM.replace(gradient_checkpointing=True)).reason


def test_fewer_workers_answers_host_memory_only():
    strategy = strategies.get("fewer_workers")()
    assert strategy.matches(HOST_OOM) and not strategy.matches(DEVICE_OOM)
    assert apply("fewer_workers", failure=HOST_OOM).plan.dataloader_num_workers == 2
    assert "no workers" in apply("fewer_workers", plan=PROGRAM.replace(dataloader_num_workers=0)).reason


def test_an_oom_in_evaluation_reaches_only_the_evaluation_rung():
    matching = [name for name in strategies.available() if strategies.get(name)().matches(EVAL_OOM)]
    assert matching == ["halve_eval_batch"]
    applied = apply("halve_eval_batch", failure=EVAL_OOM)
    assert applied.plan == PROGRAM.replace(per_device_eval_batch_size=8)


def test_unknown_strategies_and_parameters_are_named():
    with pytest.raises(StrategyError, match="unknown strategy 'quantum'.*known: bf16"):
        strategies.get("quantum")
    with pytest.raises(StrategyError, match="no parameter 'floor'.*accepts: min_batch"):
        strategies.get("halve_batch")(floor=2)
    with pytest.raises(StrategyError, match="must be int"):
        strategies.get("halve_batch")(min_batch="two")
    with pytest.raises(StrategyError, match="1 or more"):
        strategies.get("halve_batch")(min_batch=0)
