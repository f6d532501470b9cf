"""An ordinary PyTorch Lightning fine-tune, with nothing of oomladder in it: a LightningModule around a
tiny Llama-style model built from a config (nothing is downloaded), a LightningDataModule with a
`batch_size`, and `Trainer(accumulate_grad_batches=..., precision=...)`.

Its sequences grow mid-run, as in a sequence-length warm-up: the first optimizer steps train on the
first `--short-len` tokens of each sample, the steps from `--grow-at-step` on on all `--long-len`. The
plan that fit at step 1 runs out of memory later, whatever order the samples come in.

It keeps its own record of what it trained: a line `PID STEP` per optimizer step it runs
(`--count-steps`), and the samples of each step, `PID STEP i,j,...` (`--samples-log`). It prints the
samples of each optimizer step, the effective batch measured inside the program.
"""

import argparse
import os

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import LlamaConfig, LlamaForCausalLM


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--max-steps", type=int, default=6)
    p.add_argument("--samples", type=int, default=0, help="samples in the dataset (default: one epoch of the run)")
    p.add_argument("--short-len", type=int, default=32)
    p.add_argument("--long-len", type=int, default=256)
    p.add_argument("--grow-at-step", type=int, default=3, help="the first optimizer step on long sequences")
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--batch-size-as-hparam", action="store_true",
                   help="the module's hyperparameter `batch_size` sets the batch, not the datamodule's attribute")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=344)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--count-steps", help="append a line 'PID STEP' to this file for every optimizer step executed")
    p.add_argument("--samples-log", help="append 'PID STEP i,j,...': the samples each optimizer step trained on")
    return p.parse_args()


class Sequences(Dataset):
    """Sample i: `length` tokens that depend on i alone."""

    def __init__(self, n, length, vocab):
        self.n, self.length, self.vocab = n, length, vocab

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        ids = torch.randint(0, self.vocab, (self.length,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "index": i}


class SequenceData(pl.LightningDataModule):
    def __init__(self, batch_size, samples, length, vocab, shuffle, workers, short_len, grow_at_step):
        super().__init__()
        self.batch_size = batch_size
        self.samples, self.length, self.vocab, self.shuffle, self.workers = samples, length, vocab, shuffle, workers
        self.short_len, self.grow_at_step = short_len, grow_at_step

    def train_dataloader(self):
        return DataLoader(Sequences(self.samples, self.length, self.vocab), batch_size=self.batch_size,
                          shuffle=self.shuffle, num_workers=self.workers)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        if self.trainer.training and self.trainer.global_step + 1 < self.grow_at_step:  # the warm-up
            batch["input_ids"] = batch["input_ids"][:, :self.short_len]
        return batch


class HparamData(SequenceData):
    """The batch comes from the module's hyperparameters (`self.hparams.batch_size`), as in many scripts."""

    def __init__(self, module, *args):
        super().__init__(None, *args)
        del self.batch_size
        self.module = module

    def train_dataloader(self):
        return DataLoader(Sequences(self.samples, self.length, self.vocab), batch_size=self.module.hparams.batch_size,
                          shuffle=self.shuffle, num_workers=self.workers)


class TinyLlama(pl.LightningModule):
    def __init__(self, vocab, hidden, layers, intermediate, heads, batch_size=None):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.model = LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096))

    def training_step(self, batch, batch_idx):
        ids = batch["input_ids"]
        loss = self.model(input_ids=ids, labels=ids).loss
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3)
        steps = self.trainer.max_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class StepLedger(pl.Callback):
    """The program's own record of the optimizer steps it ran and the samples each one trained on."""

    def __init__(self, steps_path, samples_path):
        self.steps_path, self.samples_path = steps_path, samples_path
        self.samples, self.last_step = [], None

    def on_train_start(self, trainer, pl_module):
        self.last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += batch["index"].tolist()
        if trainer.global_step == self.last_step:
            return  # accumulating: the optimizer has not stepped yet
        self.last_step = step = trainer.global_step
        print(f"step {step}: {len(self.samples)} samples in micro-batches of {len(batch['index'])} "
              f"x {trainer.accumulate_grad_batches}, precision {trainer.precision}", flush=True)
        if self.steps_path:
            with open(self.steps_path, "a") as f:
                f.write(f"{os.getpid()} {step}\n")
        if self.samples_path:
            with open(self.samples_path, "a") as f:
                f.write(f"{os.getpid()} {step} {','.join(map(str, self.samples))}\n")
        self.samples = []


def main():
    a = parse_args()
    pl.seed_everything(0)
    samples = a.samples or a.batch_size * a.grad_accum * a.max_steps
    model = TinyLlama(a.vocab, a.hidden, a.layers, a.intermediate, a.heads,
                      batch_size=a.batch_size if a.batch_size_as_hparam else None)
    data_args = (samples, a.long_len, a.vocab, a.shuffle, a.workers, a.short_len, a.grow_at_step)
    data = HparamData(model, *data_args) if a.batch_size_as_hparam else SequenceData(a.batch_size, *data_args)
    trainer = pl.Trainer(max_steps=a.max_steps, accumulate_grad_batches=a.grad_accum, precision=a.precision,
                         accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[StepLedger(a.count_steps, a.samples_log)])
    trainer.fit(model, datamodule=data)
    print(f"finished {trainer.global_step} steps", flush=True)


if __name__ == "__main__":
    main()
