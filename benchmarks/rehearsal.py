"""What the CPU rehearsal costs, and whether a cheaper allocator setting still fails where a device would:
`python -m benchmarks.rehearsal` (about 8 minutes on 2 quiet cores).

A healthy LoRA fine-tune of a Llama (hidden 512, 4 layers, batch 4, 128 then 512 tokens) runs in a fresh process
per setting, each under oomladder's own `--memory-cap` code (worker/hooks/memcap.py: a limit set after the imports):
- uncapped: no limit and glibc's own allocator settings, the run as a user would start it;
- `--cpu-cap address-space` (process/launch.py): an address-space limit, 2 malloc arenas, every block of 1 MiB or
  more mapped on its own, so a freed activation is given back at once, as a device's allocator reuses it;
- the cheaper candidates: glibc's own thresholds under the same limit; a 4 MiB threshold; transparent huge pages
  for PyTorch's large blocks (THP_MEM_ALLOC_ENABLE);
- `--cpu-cap allocator`, the default where a C compiler is found: process/oomcap.c, a cap on the bytes malloc has
  handed out (and the files mapped in) through `LD_PRELOAD`, with glibc's own thresholds, armed after the imports as
  the limit is; its peak is those bytes over the baseline.

Two runs each. Timing: under a cap it never reaches (16 GiB). Faithfulness: under a cap 10 % above the peak that
the address-space cap measures (its address space over the baseline; the tensors alive at the step's peak, plus
under 1 MiB per small block). A device of that size would finish; a setting that does not count freed memory as
free runs out of memory there, and would send the ladder climbing for memory that the device would have had. And
under a cap 10 % below it, where a device would run out of memory and the setting must too.

Columns: seconds per step (the median of the long steps), system time (the kernel mapping and zeroing pages), page
faults, and the ratio to the uncapped run.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table

from oomladder.process import allocator
from oomladder.process.launch import CPU_DEVICE_ALLOCATOR

SETTINGS = {
    "uncapped (no emulation)": None,
    "--cpu-cap address-space (1 MiB threshold, 2 arenas)": dict(CPU_DEVICE_ALLOCATOR),
    "glibc's own thresholds, 2 arenas": {"MALLOC_ARENA_MAX": "2"},
    "4 MiB threshold, 2 arenas": {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(4 << 20)},
    "address-space + huge pages (THP_MEM_ALLOC_ENABLE=1)": {**CPU_DEVICE_ALLOCATOR, "THP_MEM_ALLOC_ENABLE": "1"},
}
SHIM = "--cpu-cap allocator, the default (LD_PRELOAD)"
SETTINGS[SHIM] = {}
NEVER_REACHED = 16 << 30
STEPS, LONG_FROM = 5, 3


def worker() -> None:
    """One run in this process: the frameworks imported, the cap armed as oomladder arms it, then the steps."""
    import torch
    import transformers  # noqa: F401  (imported before the limit, as under oomladder)
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from oomladder.worker.hooks import memcap

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=8000, max_position_embeddings=1024)
    memcap.arm()
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times, before = [], resource.getrusage(resource.RUSAGE_SELF)
    try:
        for step in range(1, STEPS + 1):
            ids = torch.randint(0, 8000, (4, 512 if step >= LONG_FROM else 128))
            started = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - started)
        finished = True
    except RuntimeError as exc:
        if "can't allocate memory" not in str(exc):
            raise
        finished = False
    after = resource.getrusage(resource.RUSAGE_SELF)
    peak = memcap.peak()[0]
    print(json.dumps({"finished": finished, "step": statistics.median(times[LONG_FROM - 1:]) if finished else None,
                      "sys": after.ru_stime - before.ru_stime, "faults": after.ru_minflt - before.ru_minflt,
                      "peak": peak}))


def _shim_built() -> str | None:
    """The shim as `oomladder run --cpu-cap allocator` builds it, or None where it cannot be built here."""
    try:
        return str(allocator.library())
    except allocator.Unavailable:
        return None


def run(env_extra: dict[str, str] | None, cap: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "OOMLADDER_", "THP_", "LD_PRELOAD"))}
    env.update(env_extra or {})
    if cap:
        env["OOMLADDER_MEMORY_CAP"] = str(cap)
    result = subprocess.run([sys.executable, "-m", "benchmarks.rehearsal", "--worker"], env=env, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure() -> Table:
    shim = _shim_built()
    if shim is None:
        del SETTINGS[SHIM]
    else:
        SETTINGS[SHIM] = {"LD_PRELOAD": shim, "OOMLADDER_CPU_CAP": "allocator"}
    timings = {name: [run(extra, NEVER_REACHED if extra is not None else None) for _ in range(2)]
               for name, extra in SETTINGS.items()}
    reference = max(r["peak"] for r in timings["--cpu-cap address-space (1 MiB threshold, 2 arenas)"])
    device, small = int(reference * 1.10), int(reference * 0.90)
    plain = statistics.median(r["step"] for r in timings["uncapped (no emulation)"])
    out = Table(title=f"A healthy LoRA fine-tune under each CPU emulation (faithfulness: a {device >> 20} MiB device, "
                      f"10 % above the emulated peak)", title_justify="left")
    for column in ("setting", "s / long step", "vs uncapped", "system time", "page faults", "peak over the baseline",
                   f"finishes on {device >> 20} MiB", f"out of memory on {small >> 20} MiB"):
        out.add_column(column)
    for name, extra in SETTINGS.items():
        rows = timings[name]
        step = statistics.median(r["step"] for r in rows)
        fits = "-" if extra is None else ("yes" if run(extra, device)["finished"] else "NO: out of memory")
        fails = "-" if extra is None else ("NO: it finished" if run(extra, small)["finished"] else "yes")
        peaks = [r["peak"] for r in rows if extra is not None]
        out.add_row(name, f"{step:.2f}", f"{step / plain:.2f}x", f"{statistics.median(r['sys'] for r in rows):.1f} s",
                    f"{statistics.median(r['faults'] for r in rows):,.0f}",
                    f"{max(peaks) >> 20} MiB" if peaks else "-", fits, fails)
    return out


def main() -> int:
    if sys.argv[1:] == ["--worker"]:
        worker()
        return 0
    Console(width=200).print(measure())
    return 0


if __name__ == "__main__":
    sys.exit(main())
