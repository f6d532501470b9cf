"""A custom training loop in the style of accelerate's own examples, with nothing of oomladder in it: a tiny
Llama with LoRA adapters, a DataLoader at batch 16, `accelerator.prepare`, `accelerator.accumulate`,
`accelerator.backward`. Like most such loops it keeps its own progress: a step counter it stops at (--steps), epochs
over the data, and a LambdaLR schedule that falls linearly to zero at its last step (a loop that runs past its end
sends the learning rate negative). Its sequences grow at --grow-at-step, as in supervisor/demo/train_tiny.py.

After each optimizer step it prints its own record: 'optimizer step N: K samples [i, j, ...], loss L, lr R'."""

import argparse
import contextlib

import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from oomladder.demo.train_tiny import GrowingSequences, build_model, pad


class Indexed(GrowingSequences):
    def __getitem__(self, i):
        return {**super().__getitem__(i), "index": i}


def collate(items):
    return {**pad(items), "index": [item["index"] for item in items]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--epochs", type=int, default=1, help="the data holds --steps / --epochs steps")
    p.add_argument("--short-len", type=int, default=32)
    p.add_argument("--long-len", type=int, default=256)
    p.add_argument("--grow-at-step", type=int, default=3)
    p.add_argument("--plain-loop", action="store_true", help="no accelerator.accumulate(): step every batch")
    a = p.parse_args()
    a.vocab, a.hidden, a.intermediate, a.layers, a.heads = 32000, 256, 688, 4, 4
    accelerator = Accelerator()
    build_model(a)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(a.model_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    per_epoch = a.steps // a.epochs
    data = Indexed(a.batch_size * per_epoch, a.batch_size * (a.grow_at_step - 1), a.short_len, a.long_len, a.vocab)
    loader = DataLoader(data, batch_size=a.batch_size, shuffle=False, collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: 1 - done / a.steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    trained, step, losses = [], 0, []
    for epoch in range(a.epochs):
        for batch in loader:
            indices = batch.pop("index")
            with contextlib.nullcontext() if a.plain_loop else accelerator.accumulate(model):
                loss = model(**batch).loss
                losses.append(loss.item())
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            trained += indices
            if accelerator.sync_gradients:
                step += 1
                print(f"optimizer step {step}: {len(trained)} samples {trained}, loss {sum(losses) / len(losses):.4f}, "
                      f"lr {scheduler.get_last_lr()[0]:.9g}", flush=True)
                trained, losses = [], []
                if step >= a.steps:
                    break
        if step >= a.steps:
            break
    print(f"done: {step} optimizer steps by this program's own count")


if __name__ == "__main__":
    main()
