"""supervisor/demo/train_tiny.py with a monitoring callback of the kind people add: before training and after
each step it logs the spectral norm of a frozen base weight. In fp32 it works. Once the base weights load in bf16
(the bf16 rung's doing), `torch.linalg.matrix_norm(..., ord=2)` fails on the CPU: its SVD has no BFloat16 kernel.
A rung broke a program that worked. (It breaks before the first bf16 step: bf16 is minutes per step on a CPU
without bf16 units.)"""

import sys

import torch
import transformers

from oomladder.demo import train_tiny


class SpectralNorm(transformers.TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._log(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._log(state, model)

    @staticmethod
    def _log(state, model):
        weight = model.get_base_model().model.layers[0].self_attn.o_proj.weight
        print(f"step {state.global_step} o_proj spectral norm {torch.linalg.matrix_norm(weight, ord=2).item():.4f}",
              flush=True)


if __name__ == "__main__":
    trainer_class = transformers.Trainer
    train_tiny.Trainer = lambda *a, **k: trainer_class(*a, **{**k, "callbacks": [*(k.get("callbacks") or []),
                                                                                 SpectralNorm()]})
    sys.exit(train_tiny.main())
