"""A TRL fine-tune in TRL's usual style, with nothing of oomladder in it: `SFTConfig` and `SFTTrainer` (or,
with --dpo, `DPOConfig` and `DPOTrainer` on prompt/chosen/rejected pairs) with a LoRA `peft_config` and a
tokenizer built locally (nothing is downloaded), on the tiny Llama of supervisor/demo/train_tiny.py. A
quarter of its samples are 8 times longer than the rest. With --count-steps FILE it writes a line
'PID STEP' per optimizer step it runs."""

import argparse
import os

import torch
from datasets import Dataset
from peft import LoraConfig
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from oomladder.demo.train_tiny import build_model


class CountSteps(TrainerCallback):
    def __init__(self, path):
        self.path = path

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            with open(self.path, "a") as f:
                f.write(f"{os.getpid()} {state.global_step}\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--short-len", type=int, default=32)
    p.add_argument("--count-steps")
    p.add_argument("--dpo", action="store_true", help="preference pairs through DPOTrainer instead")
    a = p.parse_args()
    a.vocab, a.hidden, a.intermediate, a.layers, a.heads = 32000, 256, 688, 4, 4
    build_model(a)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, a.vocab)}}
    words = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    n = a.batch_size * a.grad_accum * a.max_steps
    lengths = [a.short_len * (8 if i % 4 == 3 else 1) for i in range(n)]  # a quarter of them 8x longer
    rows = [torch.randint(3, a.vocab, (length,), generator=torch.Generator().manual_seed(i)).tolist()
            for i, length in enumerate(lengths)]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    callbacks = [CountSteps(a.count_steps)] if a.count_steps else None
    common = dict(output_dir=a.output_dir, per_device_train_batch_size=a.batch_size,
                  gradient_accumulation_steps=a.grad_accum, max_steps=a.max_steps,
                  learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                  gradient_checkpointing=False, seed=0, max_length=None, dataloader_num_workers=0)
    if a.dpo:
        text = [" ".join(f"w{t}" for t in row) for row in rows]
        half = [len(t.split()) // 2 for t in text]
        pairs = Dataset.from_dict({"prompt": [" ".join(t.split()[:h]) for t, h in zip(text, half)],
                                   "chosen": [" ".join(t.split()[h:]) for t, h in zip(text, half)],
                                   "rejected": [" ".join(reversed(t.split()[h:])) for t, h in zip(text, half)]})
        trainer = DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=pairs, processing_class=tokenizer,
                             peft_config=lora, callbacks=callbacks)
    else:
        trainer = SFTTrainer(model=model, args=SFTConfig(**common),
                             train_dataset=Dataset.from_dict({"input_ids": rows}),
                             processing_class=tokenizer, peft_config=lora, callbacks=callbacks)
    trainer.train()
    batch = trainer._train_batch_size
    print(f"finished {trainer.state.global_step} steps; batch {batch} x accumulation "
          f"{trainer.args.gradient_accumulation_steps} = effective batch "
          f"{batch * trainer.args.gradient_accumulation_steps}")


if __name__ == "__main__":
    main()
