"""A small training loop for the hostile-night tests, in the shape of the plain PyTorch API's example
(docs/frameworks.md, "Plain PyTorch"): steps that take --sleep seconds, and the ways a night goes wrong on demand."""

import argparse
import os
import signal
import subprocess
import sys
import time

import torch

from oomladder import api

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=5)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM, as some programs do")
p.add_argument("--daemon", help="start a process that setsid's away from the worker, writing its pid here")
p.add_argument("--hidden-daemon", help="start one that setsid's away, clears its environment (env -i) and ignores "
               "SIGTERM: only the attempt's cgroup knows it; its pid goes here")
p.add_argument("--hidden-child", help="start one that clears its environment and ignores SIGTERM but stays in the "
               "worker's session; its pid goes here")
p.add_argument("--helper-error", action="store_true", help="a Python helper it starts dies of a ValueError")
p.add_argument("--oom-at", type=int, help="at this step, allocate far more than a --memory-cap allows")
p.add_argument("--fail", help="raise this error at step 2")
p.add_argument("--count-steps")
a = p.parse_args()

if a.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if a.daemon:
    daemon = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    with open(a.daemon, "w") as f:
        f.write(str(daemon.pid))
# Ignores SIGTERM, but leaves a mark (PIDFILE.term) when one comes: a test knows the sweep has reached it.
STUBBORN = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: open(sys.argv[1] + '.term', 'w')); "
            "time.sleep(1000)")
for pidfile, own_session in ((a.hidden_daemon, True), (a.hidden_child, False)):
    if pidfile:
        hidden = subprocess.Popen(["env", "-i", sys.executable, "-c", STUBBORN, pidfile], start_new_session=own_session)
        with open(pidfile, "w") as f:
            f.write(str(hidden.pid))
if a.helper_error:
    subprocess.run([sys.executable, "-c", "raise ValueError('a helper of the program failed')"])

model = torch.nn.Linear(8, 8)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
plan = api.plan(per_device_train_batch_size=16, gradient_accumulation_steps=1)
session = api.session(model=model, optimizer=optimizer)
start = session.resume()
for step in range(start + 1, a.steps + 1):
    if a.fail and step == 2:
        raise ValueError(a.fail)
    if a.oom_at == step and plan.per_device_train_batch_size == 16:
        torch.empty(64 * 2**30, dtype=torch.uint8).fill_(1)  # the emulated device has nothing like it
    model(torch.randn(plan.per_device_train_batch_size, 8)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    time.sleep(a.sleep)
    if a.count_steps:
        with open(a.count_steps, "a") as f:
            f.write(f"{os.getpid()} {step}\n")
    print(f"step {step}", flush=True)
    session.step_done(step)
