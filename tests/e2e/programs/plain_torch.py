"""A plain PyTorch training loop with no Hugging Face in it: it takes its batch and accumulation
from the command line (oomladder fills {placeholders}) and its inputs grow at step 3, so the
first plan runs out of memory mid-run under a cap. Its fault options make the other ways a night
goes wrong happen for real: a bug, a hang, a SIGKILL, a connection reset."""

import argparse
import os
import signal
import sys
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, required=True)
p.add_argument("--accum", type=int, required=True)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--width", type=int, default=1024)
p.add_argument("--fail", help="raise this error at step 2 instead of training on")
p.add_argument("--hang-at", type=int, help="stop making progress (and output) at this step")
p.add_argument("--kill-self-at", type=int, help="SIGKILL itself at this step, as the kernel's OOM killer would")
p.add_argument("--reset-once", help="at step 2, fail with a connection reset unless this file exists (then create it)")
a = p.parse_args()



class Scale(torch.nn.Module):
    """Elementwise weights: activations as large as a wide layer's, at a sliver of the compute."""

    def __init__(self, width):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * self.weight


torch.manual_seed(0)
model = torch.nn.Sequential(Scale(a.width), torch.nn.Tanh(), Scale(a.width), torch.nn.Tanh(), torch.nn.Linear(a.width,
                                                                                                              1))
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
for step in range(1, a.steps + 1):
    if a.fail and step == 2:
        raise ValueError(a.fail)
    if a.hang_at == step:
        time.sleep(3600)
    if a.kill_self_at == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if a.reset_once and step == 2 and not os.path.exists(a.reset_once):
        open(a.reset_once, "w").close()
        raise ConnectionResetError(104, "Connection reset by peer")
    rows = 64 if step < 3 else 2048  # the long examples arrive at step 3
    for _ in range(a.accum):
        x = torch.randn(a.batch * rows, a.width)
        loss = model(x).pow(2).mean() / a.accum
        loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    print(f"step {step} effective_batch {a.batch * a.accum}", flush=True)
print("done", file=sys.stderr)
