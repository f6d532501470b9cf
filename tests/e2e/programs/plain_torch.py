"""A plain PyTorch training loop with no Hugging Face in it: it takes its batch and accumulation
from the command line (oomladder fills {placeholders}) and its inputs grow at step 3, so the
first plan runs out of memory mid-run under a cap."""

import argparse
import sys

import torch

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, required=True)
p.add_argument("--accum", type=int, required=True)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--width", type=int, default=1024)
p.add_argument("--fail", help="raise this error at step 2 instead of training on")
a = p.parse_args()



class Scale(torch.nn.Module):
    """Elementwise weights: activations as large as a wide layer's, at a sliver of the compute."""

    def __init__(self, width):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * self.weight


torch.manual_seed(0)
model = torch.nn.Sequential(Scale(a.width), torch.nn.Tanh(), Scale(a.width), torch.nn.Tanh(), torch.nn.Linear(a.width, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
for step in range(1, a.steps + 1):
    if a.fail and step == 2:
        raise ValueError(a.fail)
    rows = 64 if step < 3 else 2048  # the long examples arrive at step 3
    for micro in range(a.accum):
        x = torch.randn(a.batch * rows, a.width)
        loss = model(x).pow(2).mean() / a.accum
        loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    print(f"step {step} effective_batch {a.batch * a.accum}", flush=True)
print("done", file=sys.stderr)
