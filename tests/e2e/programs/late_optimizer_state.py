"""supervisor/demo/train_tiny.py with an optimizer that, from --grow-at-step on, keeps per-sample
statistics during its step (a buffer of 96 MiB per sample of the micro-batch, as gradient-noise-scale
estimators keep): under the cap, the real out-of-memory error strikes inside the optimizer step, where
the weights may be half-updated. With --hash-checkpoints FILE it writes the bytes of each checkpoint-N
it saves (path and SHA-256 of each file), so a test can tell whether anyone wrote there later."""

import hashlib
import json
import sys
from pathlib import Path

import torch
import transformers

from oomladder.demo import train_tiny

PER_SAMPLE = 96 * 2**20


class LateStateTrainer(transformers.Trainer):
    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        original = optimizer.step

        def step(*a, **k):
            if self.state.global_step + 1 >= GROW_AT:  # the step being taken
                stats = torch.zeros(self.args.per_device_train_batch_size * PER_SAMPLE, dtype=torch.uint8)
                stats[::4096] = 1
            return original(*a, **k)

        optimizer.step = step
        return optimizer


class HashCheckpoints(transformers.TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        hashes = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(folder.rglob("*")) if p.is_file()}
        with open(HASHES, "a") as f:
            f.write(json.dumps({"folder": str(folder), "files": hashes}) + "\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    GROW_AT = int(args[args.index("--grow-at-step") + 1]) if "--grow-at-step" in args else 3
    HASHES = None
    if "--hash-checkpoints" in args:
        at = args.index("--hash-checkpoints")
        HASHES = args[at + 1]
        del args[at:at + 2]
        sys.argv[1:] = args
    original_trainer = LateStateTrainer

    def trainer(*a, **k):
        if HASHES:
            k["callbacks"] = [*(k.get("callbacks") or []), HashCheckpoints()]
        return original_trainer(*a, **k)

    train_tiny.Trainer = trainer
    train_tiny.main()
