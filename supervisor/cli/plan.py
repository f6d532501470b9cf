"""`oomladder plan`: the estimated peak of each rung before anything is launched."""

from __future__ import annotations

import argparse
import importlib.util
import json

from oomladder.cli.commands import initial_plan
from oomladder.errors import UsageError
from oomladder.ladder import load_ladder
from oomladder.memory import fits
from oomladder.memory.estimate import Workload
from oomladder.memory.shape import from_config, read_config
from oomladder.plan import Facts, Plan
from oomladder.units import format_size, parse_size
from oomladder.views.display import make_console

# --trainer's names, and the class the estimator knows each by (memory/estimate.py, METRICS_BYTES).
TRAINERS = {"transformers": None, "trl-sft": "trl.trainer.sft_trainer.SFTTrainer"}


def plan(args: argparse.Namespace) -> int:
    given = initial_plan(args.settings)
    total = parse_size(args.memory_cap, "--memory-cap") if args.memory_cap else _cuda_memory()
    shape = from_config(read_config(args.model))
    ladder = load_ladder(args.ladder)
    device = args.device or "cuda"
    if total is None:
        raise UsageError("no CUDA device here to size the plan for: give --memory-cap, the device's size (e.g. "
                         "24GiB)")
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    adapters = args.lora_rank is not None
    trainable = shape.lora_params(args.lora_rank, targets) if adapters else shape.params
    start = Plan(per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
                 per_device_eval_batch_size=args.batch_size, world_size=1, precision="fp32",
                 load_dtype=shape.dtype, quantization="none", gradient_checkpointing=False,
                 dataloader_num_workers=0, optim="adamw_torch_fused", fused_cross_entropy=False,
                 activation_offloading=False).merged(given)
    facts = Facts(device=device, bf16_supported=True, base_frozen=adapters,
                  trainable_fraction=trainable / shape.params if shape.params else None,
                  liger=importlib.util.find_spec("liger_kernel") is not None)
    work = Workload(args.batch_size, args.seq_len, adapters, trainable, targets, trainer=TRAINERS[args.trainer])
    capacity = fits.usable(total, device, capped=False)
    if capacity <= 0:
        raise UsageError(f"--memory-cap {args.memory_cap or format_size(total)} leaves nothing usable on {device} (the "
                         f"CUDA context alone takes 512 MiB): give the device's size, e.g. 24GiB")
    rows = fits.walk(ladder, shape, start, work, facts, capacity)
    if args.format == "json":
        print(json.dumps(fits.to_json(rows, capacity), indent=2))
        return 0
    console = make_console()
    what = f"LoRA r{args.lora_rank} on {','.join(targets)}" if adapters else "every weight trains"
    console.print(fits.render(rows, capacity, f"{args.model}: {shape.params / 1e9:.2f}B parameters, {what}, "
                                  f"batch {args.batch_size} x {args.seq_len} tokens, on {device} with "
                                  f"{_size(total)} ({_size(capacity)} usable)"))
    where = fits.where_line(rows)
    if where:
        console.print(where, markup=False, highlight=False)
    console.print(fits.verdict(rows, capacity), markup=False, highlight=False)
    skipped = fits.skipped_line(rows)
    if skipped:
        console.print(skipped, markup=False, highlight=False)
    console.print(fits.weights_line(shape), markup=False, highlight=False)
    return 0


def _size(n: int) -> str:
    return format_size(n)


def _cuda_memory() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory
