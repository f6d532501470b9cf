"""The memory estimate: what each part of a training step costs, and what each rung saves.

benchmarks/estimator.py measures the same arithmetic against real peaks; these tests pin its rules.
"""

import pytest

from oomladder.memory.estimate import CUDA_CONTEXT, HEADROOM, Workload, estimate, usable
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
    return estimate(shape, plan, lora(shape)).parts["weights"]


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
    assert parts["weights"] + parts["gradients"] + parts["optimizer"] == 16 * shape.params


def test_8bit_optimizers_keep_2_bytes_of_state_per_trained_parameter():
    shape = from_config(LLAMA_1B)
    parts = estimate(shape, START.replace(optim="paged_adamw_8bit"), full(shape)).parts
    assert parts["optimizer"] == 2 * shape.params


def test_adapters_train_in_fp32_whatever_the_base_is_loaded_in():
    shape = from_config(LLAMA_1B)
    work = lora(shape)
    parts = estimate(shape, START.replace(load_dtype="bfloat16", precision="bf16"), work).parts
    assert parts["gradients"] == 4 * work.trainable_params and parts["optimizer"] == 8 * work.trainable_params


def test_logits_cost_12_bytes_per_token_per_vocabulary_entry():
    shape = from_config(LLAMA_1B)
    assert estimate(shape, START, lora(shape, 4, 1024)).parts["logits"] == 12 * 4 * 1024 * 32000


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
    assert after["weights"] < before["weights"] and after["activations"] > before["activations"]
    short = [estimate(shape, p, lora(shape, 1, 64)).peak for p in (bf16, bf16.replace(quantization="int8"))]
    assert short[1] < short[0]  # with few tokens, the weights win


def test_halving_the_micro_batch_halves_activations_and_logits_but_not_weights():
    shape = from_config(LLAMA_1B)
    eight, four = (estimate(shape, START, lora(shape, batch)).parts for batch in (8, 4))
    assert four["activations"] * 2 == eight["activations"] and four["logits"] * 2 == eight["logits"]
    assert four["weights"] == eight["weights"]


def test_checkpointing_keeps_one_input_per_layer_instead_of_every_activation():
    shape = from_config(LLAMA_1B)
    plain = estimate(shape, START, lora(shape)).parts["activations"]
    checkpointed = estimate(shape, START.replace(gradient_checkpointing=True), lora(shape)).parts["activations"]
    assert checkpointed < plain / 10


def test_bf16_autocast_over_fp32_weights_keeps_a_bf16_copy_of_each_matmul_weight():
    shape = from_config(LLAMA_1B)
    parts = estimate(shape, START.replace(precision="bf16"), lora(shape)).parts
    assert parts["weight copies"] == 2 * (shape.linear_params + shape.vocab * shape.hidden)
    loaded_bf16 = estimate(shape, START.replace(precision="bf16", load_dtype="bfloat16"), lora(shape)).parts
    assert loaded_bf16["weight copies"] == 0


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
    assert set(guess.split) == {"weights", "optimizer states", "gradients", "runtime"}
    name, share = guess.dominant()
    assert name == "optimizer states" and 0.45 < share < 0.5
    # The demo's model, a large vocabulary on a narrow model: the start of the backward pass, and the logits,
    # decide it.
    demo = from_config({**LLAMA_1B, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
                        "num_attention_heads": 4, "num_key_value_heads": 4})
    lora_long = estimate(demo, START, lora(demo, 8, 1024))
    assert lora_long.dominant()[0] == "logits" and lora_long.split["logits"] == lora_long.parts["logits"]


def test_8bit_adam_cuts_the_optimizer_term_of_a_full_fine_tune_by_three_quarters():
    shape = from_config(LLAMA_1B)
    work = full(shape, 2, 16)
    fp32 = estimate(shape, START.replace(optim="adamw_torch"), work)
    eight = estimate(shape, START.replace(optim="adamw_bnb_8bit"), work)
    assert eight.split["optimizer states"] * 4 == fp32.split["optimizer states"]
    assert eight.dominant()[0] != "optimizer states"


def test_torch_adam_holds_a_temporary_of_every_state_on_cuda_but_one_tensor_at_a_time_on_the_cpu():
    shape = from_config(LLAMA_1B)
    plan, work = START.replace(optim="adamw_torch"), full(shape, 1, 16)
    fused = estimate(shape, START, work, "cpu").split["gradients"]
    assert estimate(shape, plan, work, "cuda").split["gradients"] == fused + 4 * shape.params
    assert estimate(shape, plan, work, "cpu").split["gradients"] == fused + 4 * 32000 * 2048  # the embedding


def test_the_fused_cross_entropy_never_holds_the_logits_whole():
    shape = from_config(LLAMA_1B)
    work = lora(shape, 4, 1024)
    plain = estimate(shape, START, work).parts["logits"]
    fused = estimate(shape, START.replace(fused_cross_entropy=True), work).parts["logits"]
    # Chunks of next_pow2(4096 / ceil(32000 / 2048)) = 256 tokens, in fp32 with their gradient, and the gradient
    # of the last hidden states.
    assert fused == 256 * 32000 * 8 + 4096 * 2048 * 4
    assert fused < plain / 10
    # A full fine-tune makes lm_head's gradient in the forward pass: it is alive at the start of the backward.
    full_fused = estimate(shape, START.replace(fused_cross_entropy=True), full(shape, 4, 1024)).parts["logits"]
    assert full_fused == fused + 4 * 32000 * 2048


def test_offloaded_activations_leave_about_one_layer_on_the_device():
    shape = from_config(LLAMA_1B)
    work = lora(shape, 8, 1024)
    kept = estimate(shape, START, work).parts["activations"]
    offloaded = estimate(shape, START.replace(activation_offloading=True), work).parts["activations"]
    assert offloaded < kept / 8  # 16 layers' saved tensors, one left
    checkpointed = START.replace(gradient_checkpointing=True)
    inputs = estimate(shape, checkpointed, work).parts["activations"]
    both = estimate(shape, checkpointed.replace(activation_offloading=True), work).parts["activations"]
    assert both < inputs / 4  # the layers' inputs wait in host memory too: two on the device, not sixteen
