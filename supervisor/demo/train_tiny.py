"""An ordinary Hugging Face fine-tune, with nothing of oomladder in it: a tiny Llama-style model
built from a config (nothing is downloaded), LoRA adapters through peft, and the real Trainer.

Its sequences grow mid-run (short for the first steps, long after), as real data does when
the long documents come up: the plan that fit at step 1 runs out of memory later. The demo and
the end-to-end tests run it under `oomladder run`; it runs just as well on its own.
"""

import argparse
import functools
import os
import shutil
import warnings

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

# peft's get_peft_model still asks for the old name, which Transformers 5 warns about on every run.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model-dir", required=True, help="where the tiny model is saved (built there if missing)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=6)
    p.add_argument("--short-len", type=int, default=32)
    p.add_argument("--long-len", type=int, default=256)
    p.add_argument("--grow-at-step", type=int, default=3, help="the first optimizer step with long sequences")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--full", action="store_true", help="train every weight instead of LoRA adapters")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=256, help="the model's width, when it is built")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=688)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--optim", default="adamw_torch_fused")
    p.add_argument("--save-final", help="save the trained model (or adapters) here at the end")
    p.add_argument("--eval-len", type=int, default=0, help="evaluate every --eval-steps on sequences this long")
    p.add_argument("--eval-steps", type=int, default=3)
    p.add_argument("--auto-find-batch-size", action="store_true", help="Hugging Face's own in-process search")
    p.add_argument("--own-loss", action="store_true", help="a Trainer subclass with a compute_loss of its own (the "
                   "same loss), as many programs have: oomladder cannot see into it, so it does not split its steps")
    p.add_argument("--count-steps", help="append a line 'PID STEP' to this file for every optimizer step executed")
    p.add_argument("--save-steps", type=int, help="save a checkpoint-N in --output-dir every N steps")
    p.add_argument("--stop-after-step", type=int, help="end training after this step (the schedule stays --max-steps')")
    p.add_argument("--resume-from", help="continue from this checkpoint-N folder")
    p.add_argument("--long-every", type=int, default=0, help="a long tail instead of a growth: every Nth optimizer "
                   "step's samples are --long-len tokens long, the rest --short-len")
    p.add_argument("--labels-on-padding", action="store_true", help="ragged samples padded to their phase's length, "
                   "with labels on the padding too (labels = input_ids), as tutorials that pad to max_length do")
    p.add_argument("--report-to", default="none", help="the Trainer's experiment trackers, e.g. tensorboard "
                   "(its event files go under --output-dir/runs)")
    return p.parse_args()


def build_model(a):
    if os.path.exists(os.path.join(a.model_dir, "config.json")):
        return
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                         num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                         max_position_embeddings=4096)
    # Every rank builds it when it is missing: each writes a folder of its own and renames it into place
    # whole, so no rank loads a config.json whose weights another rank is still writing.
    partial = f"{a.model_dir.rstrip(os.sep)}.{os.getpid()}.partial"
    LlamaForCausalLM(config).save_pretrained(partial)
    try:
        os.rename(partial, a.model_dir)
    except OSError:  # another rank's (seeded, identical) model got there first
        shutil.rmtree(partial, ignore_errors=True)


class GrowingSequences(torch.utils.data.Dataset):
    """Sample i is short before `grow_at` samples and long after; tokens depend on i alone."""

    def __init__(self, n, grow_at, short_len, long_len, vocab, ragged=False, long_every=0, per_step=1):
        self.n, self.grow_at, self.short_len, self.long_len, self.vocab = n, grow_at, short_len, long_len, vocab
        self.ragged, self.long_every, self.per_step = ragged, long_every, per_step

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.long_every:  # a long-document tail: every Nth step long
            width = self.long_len if (i // self.per_step) % self.long_every == self.long_every - 1 else self.short_len
        else:
            width = self.short_len if i < self.grow_at else self.long_len
        length = width - (i * 7) % (width // 2) if self.ragged else width
        ids = torch.randint(0, self.vocab, (length,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids.clone()}


def pad(batch, widths=()):
    """Pad to the longest sequence of the batch; padded positions are left out of the loss. `widths`: pad to the
    first of these that takes the longest row instead, and label the padding too (labels = input_ids, the pad
    token 0), as a tokenizer called with padding="max_length" and `labels = input_ids` does."""
    width = max(len(item["input_ids"]) for item in batch)
    width = next((w for w in sorted(widths) if w >= width), width)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    labels = ids.clone() if widths else torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = item["input_ids"], item["labels"], 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class StepCounter(TrainerCallback):
    """A line per optimizer step this process runs: the program's own record of its training."""

    def __init__(self, path):
        self.path = path

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            with open(self.path, "a") as f:
                f.write(f"{os.getpid()} {state.global_step}\n")


class SayHowItTrains(TrainerCallback):
    """One line, as training begins, of what this process really trains with."""

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, optimizer=None, **kwargs):
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper around the real one
        linears = sorted({type(m).__name__ for n, m in model.named_modules()
                          if n.endswith(("down_proj", "base_layer"))})
        checkpointing = getattr(model, "is_activation_checkpointing", None)  # Transformers 5's name
        if checkpointing is None:
            checkpointing = getattr(model, "is_gradient_checkpointing", False)
        workers = train_dataloader.num_workers if train_dataloader is not None else args.dataloader_num_workers
        print(f"training with batch {args.per_device_train_batch_size} x accumulation "
              f"{args.gradient_accumulation_steps}, bf16 {args.bf16}, gradient checkpointing {checkpointing} "
              f"{args.gradient_checkpointing_kwargs}, dataloader workers {workers}, linear layers "
              f"{','.join(linears)}, optimizer {type(optimizer).__module__.split('.')[0]}.{type(optimizer).__name__}",
              flush=True)


class StopAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


class OwnLoss(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)


def main():
    a = parse_args()
    build_model(a)
    torch.manual_seed(0)  # the adapters' initial weights
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.bfloat16 if a.bf16 else torch.float32)
    if not a.full:
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                 task_type="CAUSAL_LM"))
    effective = a.batch_size * a.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))  # samples per optimizer step
    data = GrowingSequences(effective * a.max_steps, effective * (a.grow_at_step - 1), a.short_len, a.long_len,
                            a.vocab, ragged=a.labels_on_padding, long_every=a.long_every, per_step=effective)
    evaluate = {"eval_strategy": "steps", "eval_steps": a.eval_steps} if a.eval_len else {}
    # Transformers 5 renamed gradient checkpointing to activation checkpointing (the old name warns); older
    # releases know only the old one.
    checkpointing = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                     else "gradient_checkpointing")
    args = TrainingArguments(
        **evaluate, per_device_eval_batch_size=a.batch_size,
        output_dir=a.output_dir, per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=a.grad_accum,
        max_steps=a.max_steps, learning_rate=1e-3, lr_scheduler_type="linear", logging_steps=1,
        save_strategy="steps" if a.save_steps else "no", save_steps=a.save_steps or 500,
        report_to=a.report_to, bf16=a.bf16, use_cpu=not torch.cuda.is_available(), dataloader_num_workers=a.workers,
        train_sampling_strategy="sequential", seed=0, auto_find_batch_size=a.auto_find_batch_size,
        **{checkpointing: a.gradient_checkpointing}, optim=a.optim)
    eval_data = GrowingSequences(32, 0, a.eval_len, a.eval_len, a.vocab) if a.eval_len else None
    callbacks = [SayHowItTrains()] + ([StepCounter(a.count_steps)] if a.count_steps else []) + (
        [StopAfter(a.stop_after_step)] if a.stop_after_step else [])
    collator = functools.partial(pad, widths=(a.short_len, a.long_len) if a.labels_on_padding else ())
    trainer = (OwnLoss if a.own_loss else Trainer)(model=model, args=args, train_dataset=data, eval_dataset=eval_data,
                                                   data_collator=collator, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=a.resume_from)
    if a.save_final:
        trainer.save_model(a.save_final)
    batch = trainer._train_batch_size  # what the Trainer really used (auto_find_batch_size changes it)
    # The model's own state, whoever turned it on: the program, a rung at launch, or oomladder in place.
    checkpointed = any(getattr(m, "gradient_checkpointing", False) is True for m in trainer.model.modules())
    print(f"finished {trainer.state.global_step} steps; gradient checkpointing {'on' if checkpointed else 'off'}; "
          f"batch {batch} x accumulation "
          f"{args.gradient_accumulation_steps} = effective batch {batch * args.gradient_accumulation_steps}")


if __name__ == "__main__":
    main()
