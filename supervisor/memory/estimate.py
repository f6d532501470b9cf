"""How much memory a plan needs: a pure estimate from the model's shape, the plan and the batch.

It counts what PyTorch and a Hugging Face Trainer really keep, tensor by tensor, for a
Llama-style decoder (tests/test_estimate.py walks the arithmetic; benchmarks/estimator.py
measures it against real peaks):

- weights by dtype and quantization: int8 is 1 byte per parameter plus a 4-byte scale per row,
  NF4 with double quantization about 0.52; embeddings, norms and lm_head stay unquantized (and
  bitsandbytes' 8-bit matmul keeps its input for the backward pass even for frozen weights);
- gradients and optimizer states of what trains (LoRA adapters train in fp32, as peft keeps them);
- under bf16 autocast with fp32 weights, the bf16 copy of every matmul weight autograd keeps for
  the backward pass;
- activations per token per layer, and with gradient checkpointing only each layer's input plus
  one layer recomputed, with the gradients of its widest tensors;
- the logits: at the start of the backward pass, log-softmax's fp32 output, its gradient and the
  gradient of its input, 12 bytes per token per vocabulary entry (TRL's SFTTrainer keeps about 20 more for
  its token entropy and accuracy); with Liger's fused linear
  cross-entropy, one chunk of them, the gradient of the last hidden states and (when lm_head trains)
  its gradient, which the fused loss makes in the forward pass;
- with activation offloading, what autograd saves waits in host memory: the device holds about one
  layer's activations (or, with checkpointing, one layer's input) at a time;
- on CUDA, the cuBLAS workspaces the allocator holds; the CUDA context is outside the allocator,
  so it counts against a card's size (`usable`) but not in the estimate of what is allocated.

The peak is the larger of the start of the backward pass (activations and logits all alive) and
its end (every gradient), over weights and optimizer states, which live throughout. `Estimate.split`
says what is alive at that peak, term by term, and so which term dominates.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from oomladder.memory.shape import ATTENTION_INPUTS, MLP_INPUTS, ModelShape
from oomladder.plan import Plan
from oomladder.status import TextEnum

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CUDA_CONTEXT = 512 * 2**20      # the driver's context and PyTorch's kernels: outside the caching allocator
CUDA_WORKSPACE = 64 * 2**20     # cuBLAS/cuDNN workspaces, held by the allocator
HEADROOM = 0.05                 # fragmentation: the allocator cannot hand out the last few percent


@dataclass(frozen=True)
class Workload:
    """What trains, on how much data per device at once."""

    batch: int                      # micro-batch per device
    seq_len: int
    adapters: bool                  # only adapters (LoRA) train; the base is frozen
    trainable_params: int
    lora_targets: tuple[str, ...] = ()
    loads_from_file: bool = True    # from_pretrained: on the CPU the file is mapped while the model fills
    trainer: str | None = None      # the trainer's class, "module.Name": whose loss computes the logits

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    def under(self, plan: Plan) -> Workload:
        """The same work at `plan`'s micro-batch: the rungs change the batch, not the sequences."""
        return dataclasses.replace(self, batch=plan.per_device_train_batch_size or self.batch)


class Term(TextEnum):
    """A term of the estimated memory, named as a person reads it (the JSON and the tables show the value)."""

    WEIGHTS = "weights"
    GRADIENTS = "gradients"
    OPTIMIZER_STATES = "optimizer states"
    ACTIVATIONS = "activations"
    LOGITS = "logits"
    WEIGHT_COPIES = "weight copies"  # bf16 copies of fp32 weights autograd keeps for the backward pass
    RUNTIME = "runtime"              # the CUDA workspaces
    FILE_MAPPING = "file mapping"    # a checkpoint's files mapped while the weights fill (the CPU)


# The terms of the peak a person reasons about, and the rungs act on (Strategy.acts_on holds one's value).
TERMS = (Term.WEIGHTS, Term.GRADIENTS, Term.OPTIMIZER_STATES, Term.ACTIVATIONS, Term.LOGITS)


@dataclass(frozen=True)
class Estimate:
    # Keyed by Term (a str, so a reader that still spells a term as text finds it too).
    parts: dict[str, float] = field(default_factory=dict)   # bytes, in the order a table shows them
    peak: int = 0
    split: dict[str, int] = field(default_factory=dict)   # what is alive at the peak, by term; sums to `peak`

    def dominant(self) -> tuple[Term, float] | None:
        """The largest term alive at the peak and its share of it: (Term.OPTIMIZER_STATES, 0.52)."""
        terms = {Term(k): v for k, v in self.split.items() if k in TERMS}
        if not terms or self.peak <= 0:
            return None
        name = max(terms, key=terms.__getitem__)
        return name, terms[name] / self.peak


def estimate(shape: ModelShape, plan: Plan, work: Workload, device: str = "cuda") -> Estimate:
    load = DTYPE_BYTES.get(_load_dtype(plan, shape), 4)
    amp = plan.precision in ("bf16", "fp16")
    compute = 2 if amp else load
    quant = plan.quantization or "none"
    h, i, v, layers = shape.hidden, shape.intermediate, shape.vocab, shape.layers

    linear_bytes = {"int8": 1 + 4 / h, "nf4": 0.5 + 1 / 64 + 4 / (64 * 256)}.get(quant, load)
    weights = int(shape.linear_params * linear_bytes) + (shape.embedding_params + shape.head_params
                                                         + shape.other_params) * load
    train_bytes = 4 if work.adapters else load     # peft keeps adapters in fp32
    gradients = work.trainable_params * train_bytes
    optimizer = work.trainable_params * _state_bytes(plan.optim, train_bytes)
    if _fused(plan.optim):
        step_temp = 0
    elif device == "cuda":  # torch's foreach Adam (the default on CUDA): a temporary per state, all at once
        step_temp = work.trainable_params * train_bytes
    else:  # on the CPU torch's Adam goes one tensor at a time: the largest one's temporary
        step_temp = min(work.trainable_params, max(v, i) * h) * train_bytes

    casts = 0  # bf16 copies of fp32 matmul weights that autograd keeps for the backward pass
    if amp and load == 4:
        casts = 2 * v * h + (2 * shape.linear_params if quant == "none" else 0)
    if quant == "nf4":
        casts += compute * h * i  # one layer's weight dequantized at a time

    per_layer = _per_layer(shape, plan, work, compute, load)
    final = 4 * h + ((load + compute) * h if not work.adapters else 0)  # final norm, lm_head's input
    logits = _logits(shape, plan, work, compute, load)
    # The recomputed layer's activations and the gradients of its widest tensors.
    recompute = per_layer + compute * 2 * (i + h)
    if plan.gradient_checkpointing:
        # Offloaded, the layers' inputs wait in host memory: two on the device, the one in use and the next.
        saved = (min(layers, 2) if plan.activation_offloading else layers) * load * h + final
        activations = work.tokens * saved
        during_backward = activations + max(logits, work.tokens * recompute)
    elif plan.activation_offloading:
        # Offloaded, a layer's saved tensors leave as the next layer runs: about one layer's on the device.
        activations = work.tokens * (per_layer + final)
        during_backward = activations + max(logits, work.tokens * recompute)
    else:
        activations = work.tokens * (layers * per_layer + final)
        during_backward = activations + logits
    backward_start = during_backward + casts
    backward_end = gradients + step_temp  # the optimizer step: activations are gone, its temporaries not
    runtime = CUDA_WORKSPACE if device == "cuda" else 0
    peak = weights + optimizer + runtime + max(backward_start, backward_end)
    if backward_start >= backward_end:
        # On top of the saved activations: the logits, or (checkpointed, offloaded) a recomputed layer if larger.
        logits_alive = logits if logits >= during_backward - activations else 0
        alive = {Term.ACTIVATIONS: during_backward - logits_alive + casts, Term.LOGITS: logits_alive}
    else:
        alive = {Term.GRADIENTS: gradients + step_temp}
    split = {Term.WEIGHTS: weights, Term.OPTIMIZER_STATES: optimizer, **alive, Term.RUNTIME: runtime}
    if device == "cpu" and work.loads_from_file:
        # The checkpoint file is mapped while the weights fill: both count against a CPU cap.
        loading = weights + shape.params * DTYPE_BYTES.get(shape.dtype, 4)
        if loading > peak:
            peak, split = loading, {Term.WEIGHTS: weights, Term.FILE_MAPPING: loading - weights}
    parts: dict[str, float] = {Term.WEIGHTS: weights, Term.GRADIENTS: gradients, Term.OPTIMIZER_STATES: optimizer,
                               Term.WEIGHT_COPIES: casts, Term.ACTIVATIONS: activations, Term.LOGITS: logits,
                               Term.RUNTIME: runtime}
    return Estimate(parts, int(peak), {k: int(v) for k, v in split.items() if v})


def load_estimate(shape: ModelShape, plan: Plan, device: str, file_bytes: int | None = None) -> Estimate:
    """The peak of `from_pretrained` alone, before any step: what a load that runs out of memory is about.

    On CUDA, Transformers reserves the whole model in its loaded format before copying a weight (its
    caching-allocator warm-up, seen on an H200), so quantization lowers the load. On the CPU the model is
    materialized in its load dtype, quantized or not, while the checkpoint's files are mapped: both count
    against a --memory-cap, and quantizing does not lower the load there.
    """
    if device == "cpu":
        weights: float = shape.params * DTYPE_BYTES.get(_load_dtype(plan, shape), 4)
        mapped = file_bytes if file_bytes is not None else shape.params * DTYPE_BYTES.get(shape.dtype, 4)
        return Estimate({Term.WEIGHTS: weights, Term.FILE_MAPPING: mapped}, int(weights + mapped))
    weights = estimate(shape, plan, Workload(1, 1, True, 0, loads_from_file=False), device).parts[Term.WEIGHTS]
    return Estimate({Term.WEIGHTS: weights}, int(weights))


def usable(device_total: int, device: str, capped: bool) -> int:
    """What a plan may allocate on a device of `device_total` bytes (a --memory-cap, or the card's size)."""
    context = CUDA_CONTEXT if device == "cuda" and not capped else 0  # a memory fraction excludes the context
    return int((device_total - context) * (1 - HEADROOM))


def _load_dtype(plan: Plan, shape: ModelShape) -> str:
    dtype = plan.load_dtype if plan.load_dtype not in (None, "auto") else shape.dtype
    return dtype if dtype in DTYPE_BYTES else "float32"


def _logits(shape: ModelShape, plan: Plan, work: Workload, compute: int, load: int) -> int:
    """Bytes the loss holds at the start of the backward pass.

    Unfused: log-softmax's fp32 output, its gradient and its input's, 12 bytes per token per vocabulary
    entry. Liger's fused linear cross-entropy runs the head in chunks of about tokens / (vocab / hidden)
    rows and makes the gradients in the forward pass: one chunk's logits in fp32 with its gradient, the
    gradient of the last hidden states, and lm_head's gradient when it trains (made early, not extra).
    """
    h, v = shape.hidden, shape.vocab
    if not plan.fused_cross_entropy:
        return work.tokens * (12 + _metrics_bytes(work.trainer)) * v
    chunk = min(work.tokens, 1 << math.ceil(math.log2(max(1, math.ceil(work.tokens / math.ceil(v / h))))))
    head_grad = 0 if work.adapters else v * h * load
    return chunk * v * 8 + work.tokens * h * compute + head_grad


# TRL's SFTTrainer computes each token's log-probability, entropy and top-1 match from the full logits in fp32
# alongside the loss (its `fused_lm_head` forward, TRL 1.x): about five more fp32 tensors of the logits' size
# alive at the peak, measured on the CPU with TRL 1.16 (docs/frameworks.md, "TRL").
METRICS_BYTES = {"trl.trainer.sft_trainer.SFTTrainer": 20}


def _metrics_bytes(trainer: str | None) -> int:
    """Bytes per token per vocabulary entry a trainer's loss keeps beyond the cross-entropy's."""
    return METRICS_BYTES.get(trainer or "", 0)


def _per_layer(shape: ModelShape, plan: Plan, work: Workload, compute: int, load: int) -> int:
    """Bytes one decoder layer keeps for the backward pass, per token."""
    h, i = shape.hidden, shape.intermediate
    amp = compute != load
    norms = 2 * 4 * h                     # RMSNorm keeps its input in fp32 (a copy when the stream is bf16)
    attention = 4 * compute * h           # SDPA keeps q, k, v (k and v repeated to every head) and its output
    if shape.attention == "eager":
        attention += shape.heads * work.seq_len * (4 + compute)  # the probabilities, fp32 and cast
    mlp = 3 * compute * i                 # gate (for SiLU), SiLU's output and up (for the product)
    int8 = plan.quantization == "int8"
    if work.adapters:
        # A frozen Linear keeps no input; an adapter's lora_A does: under autocast a cast of its own.
        targets = set(work.lora_targets)
        attn_t, mlp_t = targets & set(ATTENTION_INPUTS), targets & set(MLP_INPUTS)
        extra = (compute * h * (len(attn_t) + len(mlp_t)) if amp
                 else 0 if int8 else load * h * (bool(attn_t) + bool(mlp_t)))
        extra += compute * h * ("o_proj" in targets) + compute * i * ("down_proj" in targets)
        if int8:
            # bitsandbytes' 8-bit matmul keeps its input for the backward pass, frozen weight or not:
            # q/k/v share one, gate/up another, o_proj and down_proj one each.
            extra += 2 * load * h + compute * h + compute * i
    else:
        # Every Linear keeps its input (under autocast each one its own bf16 copy); norms their output.
        extra = (compute * h * 5 if amp else load * h * 2) + compute * h + compute * i + 2 * load * h
    return norms + attention + mlp + extra


def _state_bytes(optim: str | None, train_bytes: int) -> float:
    name = (optim or "adamw_torch").lower()
    if "8bit" in name:
        return 1 if "lion" in name else 2
    if "adafactor" in name or name.startswith("sgd"):
        return 0
    if any(k in name for k in ("lion", "adagrad", "rmsprop")):
        return train_bytes
    return 2 * train_bytes   # Adam's two moments


def _fused(optim: str | None) -> bool:
    """Fused and bitsandbytes optimizers update in place; torch's foreach Adam holds a temporary per state."""
    name = (optim or "").lower()
    return "fused" in name or "8bit" in name or "adafactor" in name or name.startswith("sgd")
