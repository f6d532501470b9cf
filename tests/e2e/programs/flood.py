"""A worker that floods its supervisor: progress lines as fast as it can write them, as a buggy or hostile
program might (a step record per sample, a log line of gigabytes). No torch, no adapter hooks needed: the
lines go straight into the attempt's progress file, where the adapter's own would.

--steps N        N valid step records (`{"step": i, "executed": true, ...}`), steps 1..N in order
--every K        number the steps K, 2K, 3K...: a program that reports samples seen, not steps
--long-line B    first, one line of B bytes with no newline in it for a while, then the newline
--done FILE      when the last line is written, the time (time.time()) goes here
"""

import argparse
import json
import os
import time

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=0)
p.add_argument("--every", type=int, default=1)
p.add_argument("--long-line", type=int, default=0)
p.add_argument("--done")
a = p.parse_args()

path = os.path.join(os.environ["OOMLADDER_ATTEMPT_DIR"], "progress.0.jsonl")
with open(path, "a", buffering=1 << 20) as f:
    f.write(json.dumps({"began_at": 0, "max_steps": a.steps * a.every}) + "\n")
    if a.long_line:
        chunk = "x" * (1 << 20)
        for _ in range(a.long_line >> 20):
            f.write(chunk)
        f.flush()
        time.sleep(1.0)  # the supervisor looks while the line is still being written
        f.write("\n")
    for i in range(1, a.steps + 1):
        f.write('{"step": %d, "max_steps": %d, "phase": "train", "peak": %d, "executed": true}\n'
                % (i * a.every, a.steps * a.every, 1000 + i % 7))
if a.done:
    with open(a.done, "w") as f:
        f.write(repr(time.time()))
