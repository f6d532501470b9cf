"""A fine-tuning notebook in the sections such notebooks have (loading, LoRA, `TrainingArguments`, `trainer.train()`),
with nothing of oomladder in it, on the folder tests/e2e/programs/hub_tiny.py builds. Its first cell holds the
parameters papermill sets (`-p`); its last section writes a line 'PID STEP' per optimizer step to `steps_log`, the
notebook's own record of the steps it ran. `write(path)` saves it as an .ipynb.

`write(path, live=FIRST_CELL)` is the notebook as a person runs it by hand, cell by cell: FIRST_CELL before it (where
`%load_ext oomladder` goes), a Trainer whose `compute_loss` is its own (so oomladder cannot split its steps: an OOM
needs a new plan), and then the same two last sections run again, as the person does after the OOM, now with the
library's own Trainer."""

import sys

import nbformat

PARAMETERS = '''model_dir = "model"
data_dir = "data"
output_dir = "out"
steps_log = "steps.log"
batch_size = 16
max_steps = 4
own_loss = False'''

LOADING = '''# 1. Loading
import os

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
dataset = load_dataset("json", data_files=os.path.join(data_dir, "train.jsonl"), split="train")
dataset = dataset.map(lambda row: tokenizer(row["text"]), remove_columns=["text"])'''

LORA = '''# 2. LoRA
from peft import LoraConfig, get_peft_model

lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
model = get_peft_model(model, lora)'''

ARGUMENTS = '''# 3. TrainingArguments
from transformers import TrainingArguments

args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
                         max_steps=max_steps, learning_rate=1e-3, logging_steps=1, save_strategy="no",
                         report_to="none", train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0)'''

TRAIN = '''# 4. Train
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback


class OwnLoss(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)


class CountSteps(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        with open(steps_log, "a") as f:
            f.write(f"{os.getpid()} {state.global_step}\\n")


trainer = (OwnLoss if own_loss else Trainer)(model=model, args=args, train_dataset=dataset, callbacks=[CountSteps()],
                  data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
trainer.train()
print(f"effective batch {trainer._train_batch_size * trainer.args.gradient_accumulation_steps}")'''


def notebook(live: str | None = None, **parameters):
    given = "".join(f"\n{name} = {value!r}" for name, value in parameters.items())  # as papermill's -p would
    cells = [nbformat.v4.new_code_cell(PARAMETERS + given, metadata={"tags": ["parameters"]})]
    if live is not None:
        cells.insert(0, nbformat.v4.new_code_cell(live))
    cells += [nbformat.v4.new_code_cell(source) for source in (LOADING, LORA, ARGUMENTS, TRAIN)]
    if live is not None:
        cells[1].source += "\nown_loss = True"
        cells += [nbformat.v4.new_code_cell("own_loss = False  # the library's loss: its steps can be split")]
        cells += [nbformat.v4.new_code_cell(source) for source in (ARGUMENTS, TRAIN)]
    return nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                          "language": "python"}})


def write(path, live: str | None = None, **parameters):
    nbformat.write(notebook(live, **parameters), str(path))
    return path


if __name__ == "__main__":
    write(sys.argv[1])
