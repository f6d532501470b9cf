"""A custom training loop in the style of accelerate's own examples, with nothing of oomladder in it: a tiny
Llama with LoRA adapters, a DataLoader at batch 16, `accelerator.prepare`, `accelerator.accumulate`,
`accelerator.backward`. Its sequences grow at --grow-at-step, as in supervisor/demo/train_tiny.py. With
--count-samples FILE it writes, after each optimizer step, a line 'PID INDEX' for every sample that step
trained on: the program's own record of what it trained, and of how many samples make one step."""

import argparse
import contextlib
import os

import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup

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
    p.add_argument("--short-len", type=int, default=32)
    p.add_argument("--long-len", type=int, default=256)
    p.add_argument("--grow-at-step", type=int, default=3)
    p.add_argument("--count-samples")
    p.add_argument("--plain-loop", action="store_true", help="no accelerator.accumulate(): step every batch")
    a = p.parse_args()
    a.vocab, a.hidden, a.intermediate, a.layers, a.heads = 32000, 256, 688, 4, 4
    accelerator = Accelerator()
    build_model(a)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(a.model_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    data = Indexed(a.batch_size * a.steps, a.batch_size * (a.grow_at_step - 1), a.short_len, a.long_len, a.vocab)
    loader = DataLoader(data, batch_size=a.batch_size, shuffle=False, collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, a.steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    trained, steps = [], 0
    for batch in loader:
        indices = batch.pop("index")
        with contextlib.nullcontext() if a.plain_loop else accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        trained += indices
        if accelerator.sync_gradients:
            steps += 1
            print(f"optimizer step: {len(trained)} samples, loss {loss.item():.4f}, lr {scheduler.get_last_lr()[0]:.6f}",
                  flush=True)
            if a.count_samples and accelerator.is_main_process:
                with open(a.count_samples, "a") as f:
                    f.writelines(f"{os.getpid()} {i}\n" for i in trained)
            trained = []
    print(f"done: {steps} optimizer steps in this process")


if __name__ == "__main__":
    main()
