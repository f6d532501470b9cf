"""A script in the style of Transformers' run_clm.py, with nothing of oomladder in it: its settings come from the
command line through HfArgumentParser (a dataclass of its own beside TrainingArguments), and it trains the tiny
Llama of supervisor/demo/train_tiny.py with LoRA adapters, its sequences growing at --grow_at_step."""

import functools
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, HfArgumentParser, Trainer, TrainingArguments

from oomladder.demo.train_tiny import GrowingSequences, StepCounter, build_model, pad


@dataclass
class ScriptArguments:
    model_dir: str = field(metadata={"help": "where the tiny model is (built there if missing)"})
    count_steps: str | None = field(default=None, metadata={"help": "a line 'PID STEP' per optimizer step run"})
    grow_at_step: int = 3
    short_len: int = 32
    long_len: int = 256


def main():
    script, args = HfArgumentParser((ScriptArguments, TrainingArguments)).parse_args_into_dataclasses()
    shape = dict(vocab=32000, hidden=256, intermediate=688, layers=4, heads=4)
    build_model(type("Shape", (), {"model_dir": script.model_dir, **shape}))
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(script.model_dir, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps
    data = GrowingSequences(effective * args.max_steps, effective * (script.grow_at_step - 1), script.short_len,
                            script.long_len, shape["vocab"])
    callbacks = [StepCounter(script.count_steps)] if script.count_steps else []
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=functools.partial(pad),
                      callbacks=callbacks)
    trainer.train()
    print(f"finished {trainer.state.global_step} steps; batch {args.per_device_train_batch_size} x accumulation "
          f"{args.gradient_accumulation_steps}")


if __name__ == "__main__":
    main()
