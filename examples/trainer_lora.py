"""A Trainer + LoRA fine-tune whose model is big for its device: a 168M-parameter Llama saved in bf16 (built
from a config when missing; nothing is downloaded), loaded as the script asks (`--load-dtype`, optionally
`device_map="auto"` with a `max_memory` budget and an offload folder, or `--device-map cuda`), then trained for a few
short steps.
Nothing of oomladder is in it. It prints the dtype and the linear layers it trains with."""

import argparse
import os
import shutil

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


def build(folder):
    if os.path.exists(os.path.join(folder, "config.json")):
        return
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                         num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=512)
    partial = f"{folder.rstrip(os.sep)}.{os.getpid()}.partial"
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(partial)
    try:
        os.rename(partial, folder)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)


class Steps(torch.utils.data.Dataset):
    def __init__(self, n, length):
        self.n, self.length = n, length

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        ids = torch.randint(0, 32000, (self.length,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids.clone()}


class CountSteps(TrainerCallback):
    def __init__(self, path):
        self.path = path

    def on_step_end(self, args, state, control, **kwargs):
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()} {state.global_step}\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--load-dtype", default="float32")
    p.add_argument("--max-memory-cpu", help="device_map='auto' with this much for the CPU, the rest to disk")
    p.add_argument("--device-map", help="from_pretrained's device_map, e.g. cuda (the GPU check's load case)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--count-steps")
    a = p.parse_args()
    build(a.model_dir)
    placement = ({"device_map": "auto", "max_memory": {"cpu": a.max_memory_cpu},
                  "offload_folder": os.path.join(a.output_dir, "offload")} if a.max_memory_cpu else
                 {"device_map": a.device_map} if a.device_map else {})
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=getattr(torch, a.load_dtype), **placement)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    linears = sorted({type(m).__name__ for n, m in model.named_modules() if n.endswith("down_proj")})
    print(f"loaded: dtype {model.get_base_model().dtype}, linear layers {','.join(linears)}", flush=True)
    args = TrainingArguments(output_dir=a.output_dir, per_device_train_batch_size=2, max_steps=a.steps,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none",
                             use_cpu=not torch.cuda.is_available(), seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=Steps(2 * a.steps, 16),
                      callbacks=[CountSteps(a.count_steps)] if a.count_steps else None)
    trainer.train()
    print(f"finished {trainer.state.global_step} steps")


if __name__ == "__main__":
    main()
