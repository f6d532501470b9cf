"""Each rung: what it changes, and why it declines when it does not apply."""

import pytest

from oomladder import strategies
from oomladder.classify import Failure, Kind
from oomladder.errors import StrategyError
from oomladder.memory.estimate import TERMS, Term
from oomladder.plan import Facts, Plan
from oomladder.strategies.base import Applied, Skipped
from oomladder.strategies.registry import available, get

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


def test_halve_batch_leaves_a_model_whose_rows_are_coupled_as_it_is():
    """Batch norm in training mode normalizes over the micro-batch: halving it changes the training itself."""
    why = "the model's BatchNorm1d layers normalize over the micro-batch in training mode"
    skipped = apply("halve_batch", facts=Facts(coupled_rows=why))
    assert isinstance(skipped, Skipped) and skipped.reason.startswith(why) and "train differently" in skipped.reason


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
    with pytest.raises(StrategyError, match="unknown strategy 'quantum'.*known: activation_offloading, bf16"):
        strategies.get("quantum")
    with pytest.raises(StrategyError, match="no parameter 'floor'.*accepts: min_batch"):
        strategies.get("halve_batch")(floor=2)
    with pytest.raises(StrategyError, match="must be int"):
        strategies.get("halve_batch")(min_batch="two")
    with pytest.raises(StrategyError, match="1 or more"):
        strategies.get("halve_batch")(min_batch=0)


# --- where the memory goes: optimizer states, logits, saved activations ------------------------------------------

FULL_ON_CPU = Facts(device="cpu", bf16_supported=True, base_frozen=False, trainable_fraction=1.0)
FULL_CUDA = Facts(device="cuda", bf16_supported=True, base_frozen=False, trainable_fraction=1.0, liger=True)
TRAINER = PROGRAM.replace(fused_cross_entropy=False, activation_offloading=False)


def test_optimizer_8bit_switches_a_full_fine_tune_to_bitsandbytes_adamw_paged_only_on_cuda():
    on_cpu = apply("optimizer_8bit", facts=FULL_ON_CPU)
    assert on_cpu.plan.optim == "adamw_bnb_8bit" and "2 bytes per parameter instead of 8" in on_cpu.reason
    assert apply("optimizer_8bit", facts=FULL_CUDA).plan.optim == "paged_adamw_8bit"
    assert on_cpu.plan.replace(optim=PROGRAM.optim) == PROGRAM  # nothing else changes


def test_optimizer_8bit_skips_where_the_optimizer_states_are_a_sliver_or_not_adam():
    lora = apply("optimizer_8bit", facts=Facts(device="cuda", base_frozen=True, trainable_fraction=0.003))
    assert isinstance(lora, Skipped) and "only 0.3 % of the parameters train" in lora.reason
    assert "full fine-tunes" in lora.reason
    assert "already 8-bit" in apply("optimizer_8bit", plan=PROGRAM.replace(optim="adamw_bnb_8bit"),
                                    facts=FULL_ON_CPU).reason
    assert "not AdamW" in apply("optimizer_8bit", plan=PROGRAM.replace(optim="adafactor"), facts=FULL_ON_CPU).reason
    assert "mps" in apply("optimizer_8bit", facts=Facts(device="mps", base_frozen=False, trainable_fraction=1.0)).reason


def test_the_cuda_only_rungs_skip_on_the_cpu_saying_why():
    fused = apply("fused_cross_entropy", plan=TRAINER, facts=FULL_ON_CPU)
    assert isinstance(fused, Skipped) and "Triton kernel, CUDA only" in fused.reason
    offload = apply("activation_offloading", plan=TRAINER, facts=FULL_ON_CPU)
    assert isinstance(offload, Skipped) and "pinned host memory" in offload.reason and "cpu" in offload.reason


def test_the_fused_cross_entropy_needs_liger_kernel_where_the_program_runs():
    missing = apply("fused_cross_entropy", plan=TRAINER, facts=Facts(device="cuda", liger=False))
    assert isinstance(missing, Skipped) and "pip install 'oomladder[liger]'" in missing.reason
    on = apply("fused_cross_entropy", plan=TRAINER, facts=FULL_CUDA)
    assert on.plan.fused_cross_entropy is True and "logits" in on.reason
    assert "already" in apply("fused_cross_entropy", plan=TRAINER.replace(fused_cross_entropy=True),
                              facts=FULL_CUDA).reason


def test_activation_offloading_on_cuda():
    on = apply("activation_offloading", plan=TRAINER, facts=FULL_CUDA)
    assert on.plan.activation_offloading is True
    assert "already" in apply("activation_offloading", plan=on.plan, facts=FULL_CUDA).reason


@pytest.mark.parametrize("name", strategies.available())
def test_every_strategy_states_its_cost(name):
    cost = strategies.get(name).cost
    assert cost.says and cost.says != "not stated" and cost.field
    assert cost.speed is None or 0 <= cost.speed < 1
    assert (cost.speed is None) == (name == "activation_offloading")  # bandwidth-bound: no number


def test_the_default_ladder_orders_rungs_by_their_cost():
    """The rungs that cost no speed come before those that do; offloading after checkpointing, before batch 1."""
    from oomladder.ladder import load_ladder
    names = [r.name for r in load_ladder().rungs]
    assert names.index("optimizer_8bit") < names.index("int8") < names.index("gradient_checkpointing")
    assert names.index("fused_cross_entropy") < names.index("halve_batch")
    last_halving = len(names) - 1 - names[::-1].index("halve_batch")
    assert names.index("gradient_checkpointing") < names.index("activation_offloading") < last_halving


def test_each_rung_acts_on_a_term_of_the_estimate():
    """`acts_on` names a term as memory/estimate.py's Term spells it (a strategy imports no memory code)."""
    acting = [get(name) for name in available() if get(name).acts_on]
    assert acting and {Term(s.acts_on) for s in acting} <= set(TERMS)
