"""A plain PyTorch training loop that uses oomladder's public API, the ten lines docs/frameworks.md "Plain PyTorch"
shows: its plan from `api.plan`, its state in `api.session`, `resume()` and `step_done()`.
Its inputs grow at step 3, so the first plan runs out of memory there under a cap. Each step's batch is
built from the step number and the sample's index, so a resumed run trains on exactly what a continuous
one would. With --count-steps FILE it writes a line 'PID STEP' per optimizer step it runs, and prints the
samples each step trained on."""

import argparse
import os

import torch

from oomladder import api

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=6)
p.add_argument("--width", type=int, default=1024)
p.add_argument("--count-steps")
a = p.parse_args()


class Scale(torch.nn.Module):
    """Elementwise weights: activations as large as a wide layer's, at a sliver of the compute."""

    def __init__(self, width):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * self.weight


def sample(step, i, rows):
    return torch.randn(rows, a.width, generator=torch.Generator().manual_seed(step * 1000 + i))


torch.manual_seed(0)
model = torch.nn.Sequential(Scale(a.width), torch.nn.Tanh(), Scale(a.width), torch.nn.Tanh(), torch.nn.Linear(a.width,
                                                                                                              1))
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
plan = api.plan(per_device_train_batch_size=16, gradient_accumulation_steps=1)
session = api.session(model=model, optimizer=optimizer)
start = session.resume()
for step in range(start + 1, a.steps + 1):
    rows = 64 if step < 3 else 2048  # the long examples arrive at step 3
    batch, accum = plan.per_device_train_batch_size, plan.gradient_accumulation_steps
    for micro in range(accum):
        x = torch.cat([sample(step, micro * batch + i, rows) for i in range(batch)])
        loss = model(x).pow(2).mean() / accum
        loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    print(f"optimizer step: {batch * accum} samples", flush=True)
    if a.count_steps:
        with open(a.count_steps, "a") as f:
            f.write(f"{os.getpid()} {step}\n")
    session.step_done(step)
