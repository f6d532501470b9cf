"""The memory estimate: what each part of a training step costs, and what each rung saves.

benchmarks/estimator.py measures the same arithmetic against real peaks; these tests pin its rules.
"""

import dataclasses
import json

import pytest

from oomladder.memory.estimate import (
    CUDA_CONTEXT,
    CUDA_WORKSPACE,
    HEADROOM,
    Estimate,
    Term,
    Workload,
    estimate,
    load_estimate,
    usable,
)
from oomladder.memory.shape import from_config
from oomladder.plan import Plan

GB = 10**9
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16, "num_attention_heads": 16,
            "num_key_value_heads": 16, "vocab_size": 32000, "torch_dtype": "float32"}
# A 14B-parameter decoder (Qwen2.5-14B's dimensions): the seed note's "14B parameters ~7 GB in 8-bit".
DECODER_14B = {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48, "num_attention_heads": 40,
               "num_key_value_heads": 8, "vocab_size": 152064, "attention_bias": True, "torch_dtype": "bfloat16"}
START = Plan(per_device_train_batch_size=8, gradient_accumulation_steps=1, precision="fp32", load_dtype="float32",
             quantization="none", gradient_checkpointing=False, optim="adamw_torch_fused")


def lora(shape, batch=8, seq=512):
    return Workload(batch, seq, adapters=True, trainable_params=shape.lora_params(8, ("q_proj", "v_proj")),
                    lora_targets=("q_proj", "v_proj"))


def full(shape, batch=8, seq=512):
    return Workload(batch, seq, adapters=False, trainable_params=shape.params)


def weights(shape, load_dtype, quantization):
    plan = START.replace(load_dtype=load_dtype, quantization=quantization)
    return estimate(shape, plan, lora(shape)).parts[Term.WEIGHTS]


def test_8bit_weights_take_about_one_byte_per_parameter_not_half_a_byte():
    shape = from_config(DECODER_14B)
    assert 14.0 * GB < shape.params < 15.5 * GB  # 14.8B with embeddings and lm_head
    int8 = weights(shape, "bfloat16", "int8")
    assert 14 * GB < int8 < 17 * GB  # the seed note's 7 GB is the 4-bit figure
    nf4 = weights(shape, "bfloat16", "nf4")
    assert 8 * GB < nf4 < 11 * GB  # 0.52 byte per Linear parameter; embeddings and lm_head stay bf16
    assert weights(shape, "bfloat16", "none") == pytest.approx(2 * shape.params)


def test_quantization_leaves_embeddings_lm_head_and_norms_in_the_load_dtype():
    shape = from_config(LLAMA_1B)
    unquantized = shape.embedding_params + shape.head_params + shape.other_params
    assert weights(shape, "float32", "int8") == pytest.approx(shape.linear_params * (1 + 4 / 2048) + 4 * unquantized,
                                                              rel=1e-6)


def test_a_full_fp32_fine_tune_with_adam_holds_16_bytes_per_parameter_besides_activations():
    shape = from_config(LLAMA_1B)
    parts = estimate(shape, START, full(shape)).parts
    assert parts[Term.WEIGHTS] + parts[Term.GRADIENTS] + parts[Term.OPTIMIZER_STATES] == 16 * shape.params


def test_8bit_optimizers_keep_2_bytes_of_state_per_trained_parameter():
    shape = from_config(LLAMA_1B)
    parts = estimate(shape, START.replace(optim="paged_adamw_8bit"), full(shape)).parts
    assert parts[Term.OPTIMIZER_STATES] == 2 * shape.params


def test_adapters_train_in_fp32_whatever_the_base_is_loaded_in():
    shape = from_config(LLAMA_1B)
    work = lora(shape)
    parts = estimate(shape, START.replace(load_dtype="bfloat16", precision="bf16"), work).parts
    assert parts[Term.GRADIENTS] == 4 * work.trainable_params
    assert parts[Term.OPTIMIZER_STATES] == 8 * work.trainable_params


def test_logits_cost_12_bytes_per_token_per_vocabulary_entry():
    shape = from_config(LLAMA_1B)
    assert estimate(shape, START, lora(shape, 4, 1024)).parts[Term.LOGITS] == 12 * 4 * 1024 * 32000


def test_bf16_halving_and_checkpointing_each_lower_the_estimate():
    shape = from_config(LLAMA_1B)
    work = lora(shape)
    bf16 = START.replace(precision="bf16", load_dtype="bfloat16")
    rungs = [START, bf16, bf16.replace(per_device_train_batch_size=4),
             bf16.replace(per_device_train_batch_size=4, gradient_checkpointing=True)]
    peaks = [estimate(shape, plan, Workload(plan.per_device_train_batch_size, 512, True, work.trainable_params,
                                            work.lora_targets)).peak for plan in rungs]
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == len(peaks)


def test_8bit_saves_weights_but_bitsandbytes_keeps_each_quantized_linears_input():
    shape = from_config(LLAMA_1B)
    bf16 = START.replace(precision="bf16", load_dtype="bfloat16")
    before = estimate(shape, bf16, lora(shape)).parts
    after = estimate(shape, bf16.replace(quantization="int8"), lora(shape)).parts
    assert after[Term.WEIGHTS] < before[Term.WEIGHTS] and after[Term.ACTIVATIONS] > before[Term.ACTIVATIONS]
    short = [estimate(shape, p, lora(shape, 1, 64)).peak for p in (bf16, bf16.replace(quantization="int8"))]
    assert short[1] < short[0]  # with few tokens, the weights win


def test_halving_the_micro_batch_halves_activations_and_logits_but_not_weights():
    shape = from_config(LLAMA_1B)
    eight, four = (estimate(shape, START, lora(shape, batch)).parts for batch in (8, 4))
    assert four[Term.ACTIVATIONS] * 2 == eight[Term.ACTIVATIONS] and four[Term.LOGITS] * 2 == eight[Term.LOGITS]
    assert four[Term.WEIGHTS] == eight[Term.WEIGHTS]


def test_checkpointing_keeps_one_input_per_layer_instead_of_every_activation():
    shape = from_config(LLAMA_1B)
    plain = estimate(shape, START, lora(shape)).parts[Term.ACTIVATIONS]
    checkpointed = estimate(shape, START.replace(gradient_checkpointing=True), lora(shape)).parts[Term.ACTIVATIONS]
    assert checkpointed < plain / 10


def test_bf16_autocast_over_fp32_weights_keeps_a_bf16_copy_of_each_matmul_weight():
    shape = from_config(LLAMA_1B)
    parts = estimate(shape, START.replace(precision="bf16"), lora(shape)).parts
    assert parts[Term.WEIGHT_COPIES] == 2 * (shape.linear_params + shape.vocab * shape.hidden)
    loaded_bf16 = estimate(shape, START.replace(precision="bf16", load_dtype="bfloat16"), lora(shape)).parts
    assert loaded_bf16[Term.WEIGHT_COPIES] == 0


def test_a_card_loses_the_cuda_context_and_some_headroom_but_a_memory_fraction_only_the_headroom():
    card = 16 * 2**30
    assert usable(card, "cuda", capped=False) == int((card - CUDA_CONTEXT) * (1 - HEADROOM))
    assert usable(card, "cuda", capped=True) == int(card * (1 - HEADROOM))


# --- where the memory goes: the split of the peak and the terms the new rungs act on -----------------------------

def test_the_peak_splits_into_its_terms_and_names_the_dominant_one():
    """A full fp32 fine-tune on short sequences: the peak is at the optimizer step, where Adam's two moments
    (8 bytes per parameter) are half of weights + gradients + moments."""
    shape = from_config(LLAMA_1B)
    guess = estimate(shape, START.replace(per_device_train_batch_size=2), full(shape, 2, 16))
    assert sum(guess.split.values()) == guess.peak
    assert set(guess.split) == {Term.WEIGHTS, Term.OPTIMIZER_STATES, Term.GRADIENTS, Term.RUNTIME}
    name, share = guess.dominant()
    assert name is Term.OPTIMIZER_STATES and 0.45 < share < 0.5
    # The demo's model, a large vocabulary on a narrow model: the start of the backward pass, and the logits,
    # decide it.
    demo = from_config({**LLAMA_1B, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
                        "num_attention_heads": 4, "num_key_value_heads": 4})
    lora_long = estimate(demo, START, lora(demo, 8, 1024))
    assert lora_long.dominant()[0] is Term.LOGITS and lora_long.split[Term.LOGITS] == lora_long.parts[Term.LOGITS]


def test_the_terms_are_journaled_and_shown_by_the_names_a_person_reads_in_the_order_a_table_shows_them():
    """A decision's estimate goes into the journal as JSON, keyed by these names, and the console, the report and
    a later resume read them back: a term renamed would be a term an older journal no longer has."""
    shape = from_config(LLAMA_1B)
    step = estimate(shape, START.replace(precision="bf16"), full(shape, 2, 16), "cuda")
    assert list(json.loads(json.dumps(step.parts))) == ["weights", "gradients", "optimizer states", "weight copies",
                                                        "activations", "logits", "runtime"]
    assert list(json.loads(json.dumps(load_estimate(shape, START, "cpu", 123).parts))) == ["weights", "file mapping"]


def test_on_the_cpu_a_mapped_checkpoint_larger_than_the_step_is_the_peak_and_its_split():
    """The checkpoint's files are mapped while the weights fill: on the CPU, where that outweighs a small step, it is
    the peak, and the split (which sums to it) says so."""
    shape = from_config(LLAMA_1B)
    guess = estimate(shape, START, lora(shape, 1, 16), "cpu")
    assert guess.split == {Term.WEIGHTS: 4 * shape.params, Term.FILE_MAPPING: 4 * shape.params}
    assert guess.peak == sum(guess.split.values())
    assert guess.dominant() == (Term.WEIGHTS, 0.5)  # the mapping is no term a rung acts on


def test_an_estimate_without_a_split_names_no_dominant_term():
    assert load_estimate(from_config(LLAMA_1B), START, "cuda").dominant() is None  # a load: no step, no split
    assert Estimate().dominant() is None


def test_8bit_adam_cuts_the_optimizer_term_of_a_full_fine_tune_by_three_quarters():
    shape = from_config(LLAMA_1B)
    work = full(shape, 2, 16)
    fp32 = estimate(shape, START.replace(optim="adamw_torch"), work)
    eight = estimate(shape, START.replace(optim="adamw_bnb_8bit"), work)
    assert eight.split[Term.OPTIMIZER_STATES] * 4 == fp32.split[Term.OPTIMIZER_STATES]
    assert eight.dominant()[0] is not Term.OPTIMIZER_STATES


def test_torch_adam_holds_a_temporary_of_every_state_on_cuda_but_one_tensor_at_a_time_on_the_cpu():
    shape = from_config(LLAMA_1B)
    plan, work = START.replace(optim="adamw_torch"), full(shape, 1, 16)
    fused = estimate(shape, START, work, "cpu").split[Term.GRADIENTS]
    assert estimate(shape, plan, work, "cuda").split[Term.GRADIENTS] == fused + 4 * shape.params
    assert estimate(shape, plan, work, "cpu").split[Term.GRADIENTS] == fused + 4 * 32000 * 2048  # the embedding


def test_the_fused_cross_entropy_never_holds_the_logits_whole():
    shape = from_config(LLAMA_1B)
    work = lora(shape, 4, 1024)
    plain = estimate(shape, START, work).parts[Term.LOGITS]
    fused = estimate(shape, START.replace(fused_cross_entropy=True), work).parts[Term.LOGITS]
    # Chunks of next_pow2(4096 / ceil(32000 / 2048)) = 256 tokens, in fp32 with their gradient, and the gradient
    # of the last hidden states.
    assert fused == 256 * 32000 * 8 + 4096 * 2048 * 4
    assert fused < plain / 10
    # A full fine-tune makes lm_head's gradient in the forward pass: it is alive at the start of the backward.
    full_fused = estimate(shape, START.replace(fused_cross_entropy=True), full(shape, 4, 1024)).parts[Term.LOGITS]
    assert full_fused == fused + 4 * 32000 * 2048


def test_offloaded_activations_leave_about_one_layer_on_the_device():
    shape = from_config(LLAMA_1B)
    work = lora(shape, 8, 1024)
    kept = estimate(shape, START, work).parts[Term.ACTIVATIONS]
    offloaded = estimate(shape, START.replace(activation_offloading=True), work).parts[Term.ACTIVATIONS]
    assert offloaded < kept / 8  # 16 layers' saved tensors, one left
    one_layer = from_config({**LLAMA_1B, "num_hidden_layers": 1})
    assert offloaded == estimate(one_layer, START, lora(one_layer, 8, 1024)).parts[Term.ACTIVATIONS]
    checkpointed = START.replace(gradient_checkpointing=True)
    inputs = estimate(shape, checkpointed, work).parts[Term.ACTIVATIONS]
    both = estimate(shape, checkpointed.replace(activation_offloading=True), work).parts[Term.ACTIVATIONS]
    assert both < inputs / 4  # the layers' inputs wait in host memory too: two on the device, not sixteen
    two_layers = from_config({**LLAMA_1B, "num_hidden_layers": 2})
    assert both == estimate(two_layers, checkpointed, lora(two_layers, 8, 1024)).parts[Term.ACTIVATIONS]


# --- the arithmetic, term by term -------------------------------------------------------------------------

@pytest.mark.parametrize("optim, state_bytes", [
    (None, 8), ("adamw_torch", 8), ("adamw_torch_fused", 8), ("paged_adamw_8bit", 2), ("paged_lion_8bit", 1),
    ("lion_32bit", 4), ("adagrad", 4), ("rmsprop", 4), ("adafactor", 0), ("sgd", 0),
])
def test_each_optimizer_keeps_its_own_bytes_of_state_per_trained_fp32_parameter(optim, state_bytes):
    shape = from_config(LLAMA_1B)
    parts = estimate(shape, START.replace(optim=optim), full(shape)).parts
    assert parts[Term.OPTIMIZER_STATES] == state_bytes * shape.params


@pytest.mark.parametrize("optim, holds_a_copy", [
    (None, True), ("adamw_torch", True), ("adamw_torch_fused", False), ("paged_adamw_8bit", False),
    ("adafactor", False), ("sgd", False),
])
def test_the_peak_is_at_the_optimizer_step_when_few_tokens_and_an_unfused_step_holds_a_copy_of_what_trains(
        optim, holds_a_copy):
    shape = from_config(LLAMA_1B)
    plan, work = START.replace(optim=optim), full(shape, batch=1, seq=1)
    result = estimate(shape, plan, work)
    p = result.parts
    step = p[Term.GRADIENTS] + (4 * shape.params if holds_a_copy else 0)
    assert p[Term.ACTIVATIONS] + p[Term.LOGITS] < step
    assert result.peak == p[Term.WEIGHTS] + p[Term.OPTIMIZER_STATES] + p[Term.RUNTIME] + step


def test_the_peak_is_at_the_start_of_the_backward_pass_when_activations_and_logits_outweigh_the_gradients():
    shape = from_config(LLAMA_1B)
    plan = START.replace(precision="bf16")
    result = estimate(shape, plan, lora(shape))
    p = result.parts
    assert result.peak == (p[Term.WEIGHTS] + p[Term.OPTIMIZER_STATES] + p[Term.RUNTIME] + p[Term.ACTIVATIONS]
                           + p[Term.LOGITS] + p[Term.WEIGHT_COPIES])


def test_a_full_fp32_fine_tune_keeps_each_linears_input_and_each_norms_input_and_output_per_token_and_layer():
    shape = from_config(LLAMA_1B)
    h, i = shape.hidden, shape.intermediate
    per_layer = (2 * 4 * h        # the two RMSNorms' fp32 inputs
                 + 4 * 4 * h      # q, k, v and the attention's output
                 + 3 * 4 * i      # gate, SiLU's output and up
                 + 4 * h * 2      # the inputs of q/k/v and of gate/up
                 + 4 * h + 4 * i  # o_proj's and down_proj's inputs
                 + 2 * 4 * h)     # the norms' outputs
    final = 4 * h + 8 * h         # the final norm, lm_head's input
    assert estimate(shape, START, full(shape, 2, 16)).parts[Term.ACTIVATIONS] == 2 * 16 * (16 * per_layer + final)


def test_under_bf16_autocast_every_linear_keeps_a_bf16_copy_of_its_input():
    shape = from_config(LLAMA_1B)
    h, i = shape.hidden, shape.intermediate
    per_layer = 2 * 4 * h + 4 * 2 * h + 3 * 2 * i + (2 * h * 5 + 2 * h + 2 * i + 2 * 4 * h)
    final = 4 * h + (4 + 2) * h
    plan = START.replace(precision="bf16")
    assert estimate(shape, plan, full(shape, 1, 8)).parts[Term.ACTIVATIONS] == 8 * (16 * per_layer + final)


@pytest.mark.parametrize("precision, quantization, targets, extra", [
    # fp32: a frozen Linear keeps no input, lora_A does: one fp32 input per group of targeted projections
    ("fp32", "none", ("q_proj", "v_proj"), lambda h, i: 4 * h),
    ("fp32", "none", ("q_proj", "gate_proj", "o_proj", "down_proj"), lambda h, i: 4 * h * 2 + 4 * h + 4 * i),
    # bf16 autocast: each lora_A its own bf16 cast
    ("bf16", "none", ("q_proj", "v_proj", "up_proj"), lambda h, i: 2 * h * 3),
    # int8: bitsandbytes keeps its matmul's inputs, frozen or not
    ("fp32", "int8", ("q_proj", "v_proj"), lambda h, i: 2 * 4 * h + 4 * h + 4 * i),
    # both at once: lora_A's bf16 casts (q, o) and bitsandbytes' inputs
    ("bf16", "int8", ("q_proj", "o_proj"), lambda h, i: 2 * h + 2 * h + (2 * 4 * h + 2 * h + 2 * i)),
])
def test_an_adapters_activations_are_what_lora_and_bitsandbytes_keep(precision, quantization, targets, extra):
    shape = from_config(LLAMA_1B)
    h, i = shape.hidden, shape.intermediate
    compute = 2 if precision == "bf16" else 4
    base = 2 * 4 * h + 4 * compute * h + 3 * compute * i
    plan = START.replace(precision=precision, quantization=quantization)
    work = Workload(1, 4, adapters=True, trainable_params=shape.lora_params(8, targets), lora_targets=targets)
    assert estimate(shape, plan, work).parts[Term.ACTIVATIONS] == 4 * (16 * (base + extra(h, i)) + 4 * h)


def test_eager_attention_also_keeps_the_probabilities_per_head_per_position_in_fp32_and_cast():
    shape = from_config(LLAMA_1B)
    eager = from_config({**LLAMA_1B, "attn_implementation": "eager"})
    work = lora(shape, 2, 128)
    plan = START.replace(precision="bf16")
    added = estimate(eager, plan, work).parts[Term.ACTIVATIONS] - estimate(shape, plan, work).parts[Term.ACTIVATIONS]
    assert added == 2 * 128 * 16 * shape.heads * 128 * (4 + 2)


# A small vocabulary: the recomputed layer, not the logits, is the larger part of the backward pass.
SMALL_VOCAB = {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "vocab_size": 100, "torch_dtype": "float32"}


@pytest.mark.parametrize("config", [LLAMA_1B, SMALL_VOCAB], ids=["logits-larger", "layer-larger"])
def test_with_checkpointing_the_backward_pass_holds_the_saved_inputs_and_the_larger_of_one_layer_and_the_logits(
        config):
    shape = from_config(config)
    h, i, v, layers = shape.hidden, shape.intermediate, shape.vocab, shape.layers
    work = lora(shape, 2, 64)
    plan = START.replace(gradient_checkpointing=True)
    plain = estimate(shape, START, work).parts
    per_layer = (plain[Term.ACTIVATIONS] // work.tokens - 4 * h) // layers
    result = estimate(shape, plan, work)
    saved = layers * 4 * h + 4 * h
    assert result.parts[Term.ACTIVATIONS] == work.tokens * saved
    recompute = per_layer + 4 * 2 * (i + h)
    assert (recompute > 12 * v) == (config is SMALL_VOCAB)
    assert result.peak == (result.parts[Term.WEIGHTS] + result.parts[Term.OPTIMIZER_STATES] + result.parts[Term.RUNTIME]
                           + work.tokens * (saved + max(12 * v, recompute)))


def test_fp16_autocast_costs_what_bf16_does_and_an_unset_quantization_is_none():
    shape = from_config(LLAMA_1B)
    bf16 = estimate(shape, START.replace(precision="bf16"), lora(shape))
    assert estimate(shape, START.replace(precision="fp16"), lora(shape)) == bf16
    assert estimate(shape, START.replace(precision="bf16", quantization=None), lora(shape)) == bf16


def test_workloads_and_estimates_are_values():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Workload(1, 1, True, 0).batch = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Estimate().peak = 1  # type: ignore[misc]
    assert (Estimate().parts, Estimate().peak) == ({}, 0)


def test_the_int8_weights_of_a_bf16_autocast_keep_no_copy_and_nf4_dequantizes_one_layer_at_a_time():
    shape = from_config(LLAMA_1B)
    amp = START.replace(precision="bf16")
    assert estimate(shape, amp.replace(quantization="int8"), lora(shape)).parts[Term.WEIGHT_COPIES] == \
        2 * shape.vocab * shape.hidden
    assert estimate(shape, amp.replace(quantization="nf4"), lora(shape)).parts[Term.WEIGHT_COPIES] == \
        2 * shape.vocab * shape.hidden + 2 * shape.hidden * shape.intermediate
    assert estimate(shape, START.replace(quantization="nf4"), lora(shape)).parts[Term.WEIGHT_COPIES] == \
        4 * shape.hidden * shape.intermediate


def test_nf4_weights_take_half_a_byte_plus_their_double_quantized_scales():
    shape = from_config(LLAMA_1B)
    unquantized = shape.embedding_params + shape.head_params + shape.other_params
    assert weights(shape, "bfloat16", "nf4") == int(shape.linear_params * (0.5 + 1 / 64 + 4 / (64 * 256))) + \
        2 * unquantized


def test_the_cuda_workspaces_count_on_cuda_only():
    shape = from_config(LLAMA_1B)
    assert estimate(shape, START, lora(shape)).parts[Term.RUNTIME] == CUDA_WORKSPACE == 64 * 2**20
    assert estimate(shape, START, lora(shape), device="cpu").parts[Term.RUNTIME] == 0
    assert estimate(shape, START, lora(shape), device="mps").parts[Term.RUNTIME] == 0


def test_on_the_cpu_the_checkpoint_file_is_mapped_while_the_weights_fill_unless_nothing_is_loaded_from_a_file():
    shape = from_config(LLAMA_1B)
    plan = START.replace(load_dtype="bfloat16")
    tiny = lora(shape, 1, 1)
    assert estimate(shape, plan, tiny, device="cpu").peak == 2 * shape.params + 4 * shape.params
    in_memory = Workload(1, 1, True, tiny.trainable_params, tiny.lora_targets, loads_from_file=False)
    assert estimate(shape, plan, in_memory, device="cpu").peak < 6 * shape.params
    assert estimate(shape, plan, tiny, device="cuda").peak < 6 * shape.params  # no mapping counted on CUDA


def test_a_load_on_the_cpu_holds_the_model_in_its_load_dtype_beside_the_mapped_file():
    shape = from_config(LLAMA_1B)
    load = load_estimate(shape, START.replace(load_dtype="bfloat16", quantization="int8"), "cpu")
    assert (load.parts, load.peak) == ({Term.WEIGHTS: 2 * shape.params, Term.FILE_MAPPING: 4 * shape.params},
                                       6 * shape.params)
    files = load_estimate(shape, START, "cpu", file_bytes=123)
    assert (files.parts[Term.FILE_MAPPING], files.peak) == (123, 4 * shape.params + 123)


def test_a_load_on_cuda_reserves_the_model_in_its_loaded_format_so_quantizing_lowers_it():
    shape = from_config(LLAMA_1B)
    int8 = START.replace(load_dtype="bfloat16", quantization="int8")
    load = load_estimate(shape, int8, "cuda")
    assert load.parts == {Term.WEIGHTS: weights(shape, "bfloat16", "int8")} and load.peak == load.parts[Term.WEIGHTS]
    assert load.peak < load_estimate(shape, START.replace(load_dtype="bfloat16"), "cuda").peak


@pytest.mark.parametrize("load_dtype", [None, "auto"])
def test_a_plan_that_does_not_choose_the_load_dtype_loads_the_checkpoints_own(load_dtype):
    shape = from_config(DECODER_14B)  # a bfloat16 checkpoint
    assert weights(shape, load_dtype, "none") == 2 * shape.params


@pytest.mark.parametrize("load_dtype, size", [("float32", 4), ("bfloat16", 2), ("float16", 2)])
def test_each_load_dtype_takes_its_bytes_per_parameter(load_dtype, size):
    shape = from_config(LLAMA_1B)
    assert weights(shape, load_dtype, "none") == size * shape.params


def test_a_dtype_the_estimator_does_not_know_counts_as_float32_loaded_and_mapped():
    shape = from_config({**LLAMA_1B, "torch_dtype": "float8_e4m3fn"})
    assert weights(shape, None, "none") == 4 * shape.params
    assert load_estimate(shape, Plan(), "cpu").parts == {Term.WEIGHTS: 4 * shape.params,
                                                         Term.FILE_MAPPING: 4 * shape.params}
    bf16 = START.replace(load_dtype="bfloat16")
    assert estimate(shape, bf16, lora(shape, 1, 1), device="cpu").peak == 2 * shape.params + 4 * shape.params


def test_the_cpu_and_a_memory_cap_lose_only_the_headroom():
    assert usable(10**9, "cpu", capped=False) == usable(10**9, "cpu", capped=True) == int(10**9 * 0.95)
    assert HEADROOM == 0.05 and CUDA_CONTEXT == 512 * 2**20


def test_a_workload_under_another_plan_takes_its_micro_batch_and_keeps_its_sequences():
    work = Workload(8, 512, adapters=True, trainable_params=10)
    assert work.tokens == 8 * 512
    assert work.under(Plan(per_device_train_batch_size=2)) == Workload(2, 512, True, 10)
    assert work.under(Plan()) == work
