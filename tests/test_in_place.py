"""In-place recovery in the worker (worker/recovery/in_place.py, worker/transformers/in_place.py), on a real
Trainer with a real tiny Llama and LoRA adapters: a step split after an OOM leaves the gradients the unsplit step
leaves, whichever way the loss is scaled and wherever the OOM struck (the forward, half-way through the backward,
the second micro-batch of an accumulation cycle). The OOM is the CPU allocator's own message, raised when a
micro-batch has more rows than the "device" takes; tests/e2e/test_in_place.py meets real ones under a cap."""

from __future__ import annotations

import json

import pytest
import torch

from oomladder.worker.recovery import chunks, in_place
from oomladder.worker.state import STATE
from oomladder.worker.transformers import in_place as trainer_in_place

pytest.importorskip("peft")

OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
       "allocate 268435456 bytes. Error code 12 (Cannot allocate memory)")
# The tolerance of a sum taken in another order in fp32 (the chunks' gradients are added, not computed at once).
CLOSE = {"rtol": 1e-5, "atol": 1e-7}


@pytest.fixture(autouse=True)
def attempt_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OOMLADDER_ATTEMPT_DIR", str(tmp_path))
    monkeypatch.delenv("OOMLADDER_IN_PLACE", raising=False)
    monkeypatch.setattr(STATE, "split", 1)
    monkeypatch.setattr(STATE, "checkpointed", False)
    monkeypatch.delenv("OOMLADDER_IN_PLACE_CHECKPOINTING", raising=False)
    return tmp_path


def records(folder):
    path = folder / "progress.0.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["in_place"] for line in lines if "in_place" in json.loads(line)]


def build(tmp_path, batch=8, accumulation=1, trainer_class=None):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                lora_dropout=0.0, task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():  # non-zero B: every LoRA weight gets a gradient
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accumulation, report_to="none", use_cpu=True)
    trainer = (trainer_class or Trainer)(model=model, args=args)
    trainer.current_gradient_accumulation_steps = accumulation
    return trainer


def batch(rows, seed, width=24):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 500, (rows, width), generator=g)
    lengths = torch.randint(width // 3, width + 1, (rows,), generator=g)  # padded rows: labels -100 past the end
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def items(trainer, *batches):
    return trainer._get_num_items_in_batch(list(batches), torch.device("cpu"))


def grads(trainer):
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad and p.grad is not None}


def run_step(trainer, inputs, num_items):
    from transformers import Trainer
    return trainer_in_place.training_step(trainer, Trainer.training_step, trainer.model, inputs, (num_items,), {})


class TooManyRows:
    """A forward pre-hook (or, with `backward`, a backward hook half-way down the model) that fails as the
    CPU allocator does when a micro-batch has more than `limit` rows."""

    def __init__(self, trainer, limit, backward=False):
        layers = trainer.model.base_model.model.model.layers
        self.limit, self.fired = limit, 0
        if backward:
            self.handle = layers[1].register_full_backward_hook(lambda m, gin, gout: self.check(gout[0]))
        else:
            self.handle = layers[1].register_forward_pre_hook(lambda m, args, kwargs: self.check(args[0] if args else
                                                                                              kwargs["hidden_states"]),
                                                              with_kwargs=True)

    def check(self, tensor):
        if tensor.shape[0] > self.limit:
            self.fired += 1
            raise RuntimeError(OOM)

    def remove(self):
        self.handle.remove()


def reference(tmp_path, steps, accumulation=1, accepts=True):
    """The gradients of the same micro-batches unsplit, on a model with nothing failing."""
    trainer = build(tmp_path / "ref", accumulation=accumulation)
    trainer.model_accepts_loss_kwargs = accepts
    losses = []
    num_items = items(trainer, *steps) if accepts else None
    for inputs in steps:
        losses.append(run_step(trainer, inputs, num_items))
    return grads(trainer), sum(losses)


@pytest.mark.parametrize("accepts", [True, False], ids=["num_items_in_batch", "mean_loss"])
@pytest.mark.parametrize("backward", [False, True], ids=["oom_in_forward", "oom_half_way_through_backward"])
def test_a_split_step_leaves_the_gradients_of_the_unsplit_step(tmp_path, attempt_dir, accepts, backward):
    inputs = batch(8, seed=1)
    expected, expected_loss = reference(tmp_path, [inputs], accepts=accepts)
    trainer = build(tmp_path / "split")
    trainer.model_accepts_loss_kwargs = accepts
    failing = TooManyRows(trainer, limit=4, backward=backward)
    loss = run_step(trainer, inputs, items(trainer, inputs) if accepts else None)
    failing.remove()
    assert failing.fired == 1 and STATE.split == 2
    got = grads(trainer)
    assert got.keys() == expected.keys() and len(got) == 12
    for name in got:
        torch.testing.assert_close(got[name], expected[name], **CLOSE)
    torch.testing.assert_close(loss, expected_loss, **CLOSE)
    record, = records(attempt_dir)
    assert record["outcome"] == "split" and (record["split_before"], record["split"]) == (1, 2)
    assert record["step"] == 1 and record["rows"] == 8 and record["oom"]["exc_type"] == "RuntimeError"
    assert "DefaultCPUAllocator" in record["oom"]["message"]


def test_the_run_goes_on_split_and_splits_further_when_it_must(tmp_path, attempt_dir):
    first, second = batch(8, seed=1), batch(8, seed=2, width=40)
    expected, _ = reference(tmp_path, [first, second], accumulation=2)
    trainer = build(tmp_path / "split", accumulation=2)
    failing = TooManyRows(trainer, limit=4)
    num_items = items(trainer, first, second)
    run_step(trainer, first, num_items)            # split in 2 after one OOM
    failing.limit = 2
    run_step(trainer, second, num_items)           # the second micro-batch of the cycle: 2 is not enough, 4 is
    failing.remove()
    assert STATE.split == 4 and failing.fired == 2
    got = grads(trainer)
    for name in got:  # the first micro-batch's gradients were kept through the second one's OOM
        torch.testing.assert_close(got[name], expected[name], **CLOSE)
    assert [(r["outcome"], r["split_before"], r["split"]) for r in records(attempt_dir)] == [
        ("split", 1, 2), ("split", 2, 4)]


def always_out_of_memory(tmp_path):
    """A step of 4 rows that runs out of memory however it is split: the OOM goes on to the supervisor."""
    trainer = build(tmp_path, batch=4)
    inputs = batch(4, seed=1)
    failing = TooManyRows(trainer, limit=0)
    with pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        run_step(trainer, inputs, items(trainer, inputs))
    failing.remove()
    return trainer, inputs, failing


def test_chunks_of_one_row_that_still_fail_fall_back_to_a_relaunch_with_the_reason(tmp_path, attempt_dir, monkeypatch):
    monkeypatch.setenv("OOMLADDER_IN_PLACE_CHECKPOINTING", "0")  # as when the ladder has no checkpointing rung
    trainer, inputs, failing = always_out_of_memory(tmp_path)
    assert failing.fired == 3 and STATE.split == 1  # 1, 2 and 4 chunks tried; the run's split is unchanged
    record, = records(attempt_dir)
    assert record["outcome"] == "floor" and record["ooms"] == 3
    assert "already split as far as it goes" in record["reason"]
    # Each OOM with its chunk's rows and what it tried, the estimator's lower bounds for the relaunch.
    assert [(t["rows"], t["tried"]) for t in record["tries"]] == [(4, 268435456), (2, 268435456), (1, 268435456)]
    assert record["seq"] == inputs["input_ids"].shape[1]
    assert all(p.grad is None for p in trainer.model.parameters())  # the failed step left nothing behind
    assert not trainer.args.gradient_checkpointing


class NeedsCheckpointing(TooManyRows):
    """Fails as the CPU allocator does for more than `limit` rows while the model keeps every layer's activations."""

    def __init__(self, trainer, limit):
        super().__init__(trainer, limit)
        self.model = trainer.model.get_base_model().model

    def check(self, tensor):
        if not self.model.gradient_checkpointing:
            super().check(tensor)


def test_at_a_row_per_chunk_checkpointing_is_turned_on_in_place_and_the_split_searched_again(tmp_path, attempt_dir):
    inputs = batch(8, seed=1)
    expected, _ = reference(tmp_path, [inputs])
    trainer = build(tmp_path / "checkpointed")
    failing = NeedsCheckpointing(trainer, limit=0)
    run_step(trainer, inputs, items(trainer, inputs))
    # 1, 2, 4, 8 chunks, then whole
    assert failing.fired == 4 and STATE.split == 1 and STATE.checkpointed is True
    got = grads(trainer)
    for name in expected:  # recomputed activations, the same gradients
        torch.testing.assert_close(got[name], expected[name], **CLOSE)
    assert trainer.args.gradient_checkpointing and trainer.args.gradient_checkpointing_kwargs["use_reentrant"] is False
    record, = records(attempt_dir)
    assert (record["outcome"], record["split"], record["checkpointing_before"], record["checkpointing"]) == (
        "split", 1, False, True)
    assert [t["checkpointing"] for t in record["tries"]] == [False] * 4
    later = batch(8, seed=2)
    run_step(trainer, later, items(trainer, later))  # the run goes on checkpointed: no OOM, no record
    failing.remove()
    assert failing.fired == 4 and len(records(attempt_dir)) == 1


def test_checkpointing_that_is_not_enough_falls_back_to_a_relaunch(tmp_path, attempt_dir):
    trainer, _, failing = always_out_of_memory(tmp_path)
    assert failing.fired == 6  # 1, 2 and 4 chunks, then again with checkpointing on
    record, = records(attempt_dir)
    assert record["outcome"] == "floor" and record["reason"].endswith("with gradient checkpointing on")
    assert [(t["rows"], t["checkpointing"]) for t in record["tries"]] == [
        (4, False), (2, False), (1, False), (4, True), (2, True), (1, True)]
    assert all(p.grad is None for p in trainer.model.parameters())  # the failed step left nothing behind


def test_an_error_in_the_retry_is_journaled_and_the_oom_goes_on_to_the_supervisor(tmp_path, attempt_dir):
    trainer = build(tmp_path)
    inputs = batch(8, seed=1)
    layers = trainer.model.base_model.model.model.layers

    def fail(module, args, kwargs):
        rows = (args[0] if args else kwargs["hidden_states"]).shape[0]
        raise RuntimeError(OOM) if rows > 4 else ValueError("this model needs the whole batch")

    handle = layers[0].register_forward_pre_hook(fail, with_kwargs=True)
    with pytest.raises(RuntimeError, match="DefaultCPUAllocator") as raised:
        run_step(trainer, inputs, items(trainer, inputs))
    handle.remove()
    assert raised.value.__cause__ is None and STATE.split == 1
    record, = records(attempt_dir)
    assert record["outcome"] == "failed" and record["error"] == "ValueError: this model needs the whole batch"


def test_a_program_with_its_own_compute_loss_is_relaunched_with_the_reason(tmp_path, attempt_dir):
    from transformers import Trainer

    class Custom(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return model(**inputs).loss * 2

    trainer = build(tmp_path, trainer_class=Custom)
    inputs = batch(8, seed=1)
    failing = TooManyRows(trainer, limit=4)
    with pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        run_step(trainer, inputs, None)
    failing.remove()
    assert failing.fired == 1
    record, = records(attempt_dir)
    assert record["outcome"] == "declined" and "Custom.compute_loss" in record["reason"]


def test_switched_off_an_oom_goes_straight_to_the_supervisor(tmp_path, attempt_dir, monkeypatch):
    monkeypatch.setenv("OOMLADDER_IN_PLACE", "0")
    trainer = build(tmp_path)
    inputs = batch(8, seed=1)
    failing = TooManyRows(trainer, limit=4)
    with pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        run_step(trainer, inputs, items(trainer, inputs))
    failing.remove()
    assert records(attempt_dir) == []


def test_splits_divide_the_plans_micro_batch():
    assert in_place.next_split(1, 16, 16) == 2 and in_place.next_split(2, 16, 16) == 4
    assert in_place.next_split(1, 6, 6) == 2 and in_place.next_split(2, 6, 6) == 3 and in_place.next_split(3, 6, 6) == 6
    assert in_place.next_split(1, 5, 5) == 5        # a prime micro-batch goes to a row per chunk
    assert in_place.next_split(16, 16, 16) is None  # the floor
    assert in_place.next_split(2, 16, 2) is None    # a short last batch already at a row per chunk
    assert in_place.next_split(1, 16, None) is None


def test_inputs_without_a_common_batch_dimension_are_not_split():
    rows, why = chunks.batch_rows({"input_ids": torch.zeros(4, 3), "position_ids": torch.zeros(1, 3)})
    assert rows is None and "position_ids does not share the first dimension (4)" in why
    assert chunks.batch_rows({"input_ids": torch.zeros(4, 3), "flag": True, "scale": torch.tensor(2.0)}) == (4, None)
    parts = chunks.chunks({"input_ids": torch.arange(10).view(5, 2), "flag": True}, 5, 2)
    assert [p["input_ids"].shape[0] for p in parts] == [3, 2] and all(p["flag"] is True for p in parts)


def test_a_chunk_drops_the_padding_none_of_its_rows_uses():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    labels = torch.arange(16).view(4, 4).masked_fill(mask == 0, -100)
    inputs = {"input_ids": torch.arange(16).view(4, 4), "attention_mask": mask, "labels": labels}
    first, second = chunks.chunks(inputs, 4, 2)
    assert first["input_ids"].shape == (2, 4) and second["input_ids"].shape == (2, 2)
    assert second["labels"].tolist() == [[8, -100], [12, 13]] and second["attention_mask"].tolist() == [[1, 0], [1, 1]]
    left = {"input_ids": torch.zeros(2, 3), "attention_mask": torch.tensor([[0, 1, 1], [0, 0, 1]])}
    assert chunks.trim(left)["input_ids"].shape == (2, 3)  # left padding: nothing at the end to drop
