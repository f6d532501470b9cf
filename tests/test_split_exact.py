"""A split step is the unsplit step, for every batch it accepts; one it cannot split exactly, it refuses.

Each case trains twice with the real Trainer (Transformers' or TRL's), on the collator people use with it: once
whole, once on a "device" that takes at most 4 rows in a micro-batch, so that the first step's micro-batch of 8 runs
out of memory (a real allocation failure of PyTorch's CPU allocator, asked for by a hook when a micro-batch is too
large) and in-place recovery splits it. The two runs must end with the same weights (rtol 1e-5: the chunks'
gradients are added in another order), the same buffers, and the same logged metrics, the Trainer's and TRL's
counters among them. tests/e2e/test_in_place.py meets real OOMs under a memory cap in a supervised worker.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from oomladder.worker.recovery import step_state
from oomladder.worker.state import STATE
from oomladder.worker.transformers import in_place as trainer_in_place

pytest.importorskip("trl")

VOCAB, PAD, EOS = 64, 0, 1
CLOSE = {"rtol": 1e-5, "atol": 1e-6}
# Logged values that are not the training's: the time it took.
TIMING = ("runtime", "per_second", "total_flos")


@pytest.fixture(autouse=True)
def in_place(tmp_path, monkeypatch):
    from transformers import Trainer
    monkeypatch.setenv("OOMLADDER_ATTEMPT_DIR", str(tmp_path))
    monkeypatch.delenv("OOMLADDER_IN_PLACE", raising=False)
    monkeypatch.setenv("OOMLADDER_IN_PLACE_CHECKPOINTING", "0")
    monkeypatch.setattr(STATE, "split", 1)
    monkeypatch.setattr(STATE, "checkpointed", False)
    original = Trainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):  # as the worker's adapter wraps it
        return trainer_in_place.training_step(self, original, model, inputs, args, kwargs)

    monkeypatch.setattr(Trainer, "training_step", training_step)
    return tmp_path


def records(folder):
    path = folder / "progress.0.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["in_place"] for line in lines if "in_place" in json.loads(line)]


class Device:
    """A device that takes at most `rows` rows through `module`: more, and the CPU allocator is asked for a
    petabyte, which it refuses with its own out-of-memory error. `after`: once the module has run (its buffers
    updated); `backward`: in the backward pass, once the forward's metrics are counted."""

    def __init__(self, module, rows, where="before"):
        self.rows, self.fired = rows, 0
        if where == "before":
            self.handle = module.register_forward_pre_hook(lambda m, args: self.check(args[0]))
        elif where == "after":
            self.handle = module.register_forward_hook(lambda m, args, out: self.check(args[0]))
        else:
            self.handle = module.register_full_backward_hook(lambda m, gin, gout: self.check(gout[0]))

    def check(self, tensor):
        if tensor.shape[0] > self.rows:
            self.fired += 1
            torch.empty(1 << 50, dtype=torch.uint8)  # RuntimeError: DefaultCPUAllocator: can't allocate memory


def tokenizer(padding_side="right"):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": PAD, "</s>": EOS, "<unk>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    words = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   padding_side=padding_side)


def rows(n=16, seed=0, shortest=4, longest=20):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(shortest, longest + 1, (n,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in lengths]


def llama(kind="causal"):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, pad_token_id=PAD,
                         num_labels=3)
    model = LlamaForSequenceClassification(config) if kind == "classify" else LlamaForCausalLM(config)
    return model.to(torch.float64)


def settings(out, **extra):
    # Plain SGD: Adam would blow float noise in near-zero gradients up to whole learning-rate steps.
    return dict(output_dir=str(out), per_device_train_batch_size=8, max_steps=2, learning_rate=0.1, optim="sgd",
                logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0, dataloader_num_workers=0,
                include_num_input_tokens_seen="all", **extra)


def args(out, **extra):
    from transformers import TrainingArguments
    return TrainingArguments(**settings(out, **extra))


# --- the cases: (a Trainer built fresh, the module a too-large micro-batch fails in, where it fails) ---------------

def causal_with(collator, features, **extra):
    from datasets import Dataset
    from transformers import Trainer

    def build(out):
        model = llama()
        trainer = Trainer(model=model, args=args(out, **extra), train_dataset=Dataset.from_list(features),
                          data_collator=collator)
        return trainer, model.model.layers[0]
    return build


def pad_to_max_with_labels_on_padding():
    """The tutorial pattern: every row padded to max_length, `labels = input_ids`, so padding carries labels."""
    from transformers import default_data_collator
    features = []
    for ids in rows():
        padded = ids + [PAD] * (24 - len(ids))
        features.append({"input_ids": padded, "attention_mask": [1] * len(ids) + [0] * (24 - len(ids)),
                         "labels": list(padded)})
    return causal_with(default_data_collator, features)


def language_modeling(padding_side="right"):
    from transformers import DataCollatorForLanguageModeling
    tok = tokenizer(padding_side)
    return causal_with(DataCollatorForLanguageModeling(tok, mlm=False), [{"input_ids": ids} for ids in rows()])


def seq2seq_collator_on_a_causal_model():
    """Alpaca-style SFT: the prompt's labels -100, padded by DataCollatorForSeq2Seq."""
    from transformers import DataCollatorForSeq2Seq
    features = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * (len(ids) // 2) +
                 ids[len(ids) // 2:]} for ids in rows()]
    return causal_with(DataCollatorForSeq2Seq(tokenizer(), label_pad_token_id=-100), features)


def padding_for_classification():
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer
    features = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": i % 3} for i, ids in enumerate(rows())]

    def build(out):
        model = llama("classify")
        trainer = Trainer(model=model, args=args(out), train_dataset=Dataset.from_list(features),
                          data_collator=DataCollatorWithPadding(tokenizer()))
        return trainer, model.model.layers[0]
    return build


def encoder_decoder():
    """T5 through DataCollatorForSeq2Seq: its labels are the decoder's, never cut by the encoder's padding."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, T5Config, T5ForConditionalGeneration, Trainer
    sources, targets = rows(seed=1), rows(seed=2, shortest=2, longest=12)
    features = [{"input_ids": s, "attention_mask": [1] * len(s), "labels": t} for s, t in zip(sources, targets)]

    def build(out):
        torch.manual_seed(0)
        model = T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_layers=2,
                                                    num_heads=4, pad_token_id=PAD, decoder_start_token_id=PAD,
                                                    eos_token_id=EOS, dropout_rate=0.0)).to(torch.float64)
        trainer = Trainer(model=model, args=args(out), train_dataset=Dataset.from_list(features),
                          data_collator=DataCollatorForSeq2Seq(tokenizer(), model=model, label_pad_token_id=-100))
        return trainer, model.encoder.block[0]
    return build


def trl_sft(packing=False):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    data = Dataset.from_dict({"input_ids": rows()})

    def build(out):
        model = llama()
        config = SFTConfig(**settings(out), max_length=24 if packing else None, packing=bool(packing),
                           **({"packing_strategy": packing} if packing else {}), dataset_num_proc=None)
        trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer())
        return trainer, model.model.layers[0]
    return build


class WithBatchNorm(torch.nn.Module):
    """A small classifier whose hidden layer is batch-normalized; `frozen`: its BatchNorm stays in eval mode
    (the usual way to fine-tune such a model), so its statistics are the running ones."""

    def __init__(self, frozen=False):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.norm = torch.nn.EmbeddingBag(VOCAB, 16, mode="sum"), torch.nn.BatchNorm1d(16)
        self.head, self.frozen = torch.nn.Linear(16, 3), frozen
        self.double()
        if frozen:
            self.norm.running_mean.normal_()
            self.norm.running_var.uniform_(0.5, 2.0)

    def train(self, mode=True):
        super().train(mode)
        if self.frozen:
            self.norm.eval()
        return self

    def forward(self, input_ids, attention_mask, labels=None):
        hidden = self.norm(self.embed(input_ids, per_sample_weights=attention_mask.to(self.head.weight.dtype)))
        logits = self.head(hidden)
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


def batch_norm(frozen):
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer
    features = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": i % 3} for i, ids in enumerate(rows())]

    def build(out):
        model = WithBatchNorm(frozen)
        trainer = Trainer(model=model, args=args(out), train_dataset=Dataset.from_list(features),
                          data_collator=DataCollatorWithPadding(tokenizer()))
        return trainer, model.head
    return build


def train(build, out, device_rows=None, where="before"):
    trainer, module = build(out)
    device = Device(module, device_rows, where) if device_rows else None
    trainer.train()
    return trainer, device


def logged(trainer):
    return [{k: v for k, v in entry.items() if not k.endswith(TIMING)} for entry in trainer.state.log_history]


def assert_same_training(whole, split):
    for (name, a), (_, b) in zip(whole.model.state_dict(keep_vars=False).items(),
                                 split.model.state_dict(keep_vars=False).items()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, **CLOSE, msg=lambda m: f"{name}: {m}")
        else:
            assert torch.equal(a, b), name  # integer buffers (BatchNorm's counter) exactly
    mine, theirs = logged(split), logged(whole)
    assert [sorted(e) for e in mine] == [sorted(e) for e in theirs]
    for got, want in zip(mine, theirs):
        for key, value in want.items():
            if isinstance(value, float):
                assert math.isclose(got[key], value, rel_tol=1e-5, abs_tol=1e-6), (key, got[key], value)
            else:
                assert got[key] == value, (key, got[key], value)


EXACT = {
    "pad_to_max_with_labels_on_padding": pad_to_max_with_labels_on_padding,
    "DataCollatorForLanguageModeling": language_modeling,
    "left_padding": lambda: language_modeling("left"),
    "DataCollatorForSeq2Seq_causal": seq2seq_collator_on_a_causal_model,
    "DataCollatorWithPadding_classification": padding_for_classification,
    "DataCollatorForSeq2Seq_encoder_decoder": encoder_decoder,
    "trl_sft": trl_sft,
    "trl_sft_packing_wrapped": lambda: trl_sft("wrapped"),
    "frozen_batch_norm": lambda: batch_norm(frozen=True),
}


@pytest.mark.parametrize("where", ["before", "backward"], ids=["oom_in_forward", "oom_in_backward"])
@pytest.mark.parametrize("case", sorted(EXACT))
def test_a_split_step_trains_as_the_unsplit_step(tmp_path, in_place, case, where):
    build = EXACT[case]()
    whole, _ = train(build, tmp_path / "whole")
    split, device = train(build, tmp_path / "split", device_rows=4, where=where)
    assert device.fired == 1 and STATE.split == 2, "the first step ran out of memory once, and was split in 2"
    record, = records(in_place)
    assert record["outcome"] == "split" and record["step"] == 1
    assert_same_training(whole, split)


def test_labels_on_the_padding_keep_their_columns():
    """The trimming that measured 30 % low: a column is dropped only when nothing in it counts."""
    from oomladder.worker.recovery import chunks
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    ids = torch.arange(8).view(2, 4)
    assert chunks.trim({"input_ids": ids, "attention_mask": mask, "labels": ids.clone()})["input_ids"].shape == (2, 4)
    second = {"input_ids": ids[1:], "attention_mask": mask[1:], "labels": ids[1:].masked_fill(mask[1:] == 0, -100)}
    assert chunks.trim(second)["labels"].tolist() == [[4, 5]]
    assert chunks.trim({**second, "labels": ids[1:].clone()})["labels"].shape == (1, 4)  # labels on the padding
    completion = {**second, "completion_mask": torch.tensor([[0, 1, 1, 0]])}
    assert chunks.trim(completion)["input_ids"].shape == (1, 3)  # a loss mask that still counts column 2
    decoder = {**second, "labels": torch.tensor([[7, 8, 9, 9]])}
    assert chunks.trim(decoder, labels_aligned=False)["labels"].tolist() == [[7, 8, 9, 9]]


REFUSED = {
    "batch_norm_in_training": (lambda: batch_norm(frozen=False), "after", "BatchNorm1d layers normalize over"),
    "trl_sft_packing_padding_free": (lambda: trl_sft("bfd"), "before", "packed"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_batch_that_cannot_be_split_exactly_is_refused_with_the_reason(tmp_path, in_place, case):
    make, where, reason = REFUSED[case]
    trainer, module = make()(tmp_path / "refused")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    device = Device(module, 0, where)
    with pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        trainer.train()
    assert device.fired == 1 and STATE.split == 1
    record, = records(in_place)
    assert record["outcome"] == "declined" and reason in record["reason"]
    for name, value in trainer.model.state_dict().items():  # the failed forward's running statistics undone
        assert torch.equal(value, before[name]), name


def test_buffers_a_failed_forward_changed_are_put_back():
    norm = torch.nn.BatchNorm1d(4).train()
    kept = step_state.Buffers(norm)
    norm(torch.randn(8, 4))
    assert kept.changed() and int(norm.num_batches_tracked) == 1
    assert kept.restore() is None
    assert int(norm.num_batches_tracked) == 0 and torch.equal(norm.running_mean, torch.zeros(4))
    big = step_state.Buffers(norm, limit=0)  # too large to copy: a change is told, not undone
    norm(torch.randn(8, 4))
    assert "num_batches_tracked" in big.restore()


def test_counters_of_a_failed_try_are_undone_and_a_split_logs_one_entry():
    class Owner:
        def __init__(self):
            self.tokens, self._metrics = 10, {"train": {"entropy": [1.0], "num_tokens": [10]}}

    owner = Owner()
    kept = step_state.Counters(owner)
    owner.tokens += 7
    owner._metrics["train"]["entropy"].append(9.0)
    owner._metrics["train"]["aux_loss"] = [3.0]
    kept.restore()
    assert owner.tokens == 10 and owner._metrics == {"train": {"entropy": [1.0], "num_tokens": [10]}}
    split = step_state.Counters(owner)
    owner._metrics["train"]["entropy"] += [2.0, 4.0]       # one entry per chunk
    owner._metrics["train"]["num_tokens"] = [30]           # a running total, replaced: kept as it is
    split.merge([0.25, 0.75])
    assert owner._metrics["train"] == {"entropy": [1.0, 3.5], "num_tokens": [30]}


def test_the_emergency_checkpoint_holds_the_buffers_and_counters_of_the_last_finished_step():
    """A relaunch resumes from the end of the last step: not from running statistics, or a count of tokens seen,
    that the failed step's forward had already moved."""
    from oomladder.worker.recovery import emergency
    norm = torch.nn.BatchNorm1d(4).train()

    from transformers import TrainerState
    state = TrainerState(num_input_tokens_seen=160)
    norm(torch.randn(8, 4))  # step 1
    emergency.keep_step_end((norm,), (state,))
    kept = norm.running_mean.clone()
    norm(torch.randn(8, 4))  # step 2's forward, then the OOM
    state.num_input_tokens_seen += 160
    assert emergency.back_to_step_end() is None
    assert torch.equal(norm.running_mean, kept) and int(norm.num_batches_tracked) == 1
    assert state.num_input_tokens_seen == 160
