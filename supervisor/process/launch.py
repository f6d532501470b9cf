"""How an attempt's plan reaches the worker: environment variables and command placeholders.

Hugging Face programs get the plan through the injected adapter (OOMLADDER_PLAN); any other
program can read OOMLADDER_<SETTING> variables or put `{per_device_train_batch_size}`-style
placeholders in its command, which are filled in element by element, never through a shell.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from oomladder.errors import UsageError
from oomladder.plan import FIELD_NAMES, Plan
from oomladder.process.allocator import preload

# A capped CPU worker emulates a device, so its allocator should behave like one: glibc reserves
# 64 MiB of address space per malloc arena (keep that small and fixed), and by default it keeps
# freed blocks of up to 32 MiB in the heap, so a freed activation would still count against the
# cap. Large blocks mapped and unmapped one by one return memory as a device's allocator does.
CPU_DEVICE_ALLOCATOR = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}

# A path only: nothing of the worker is imported here.
INJECT_DIR = Path(__file__).resolve().parent.parent / "worker" / "hooks" / "inject"
_PLACEHOLDER = re.compile(r"\{(" + "|".join(FIELD_NAMES) + r")\}")


def placeholders(command: Sequence[str]) -> set[str]:
    return {m.group(1) for part in command for m in _PLACEHOLDER.finditer(part)}


def substitute(command: Sequence[str], plan: Plan) -> list[str]:
    """`command` with each `{setting}` replaced by the plan's value; other braces are left alone."""
    def value(match: re.Match[str]) -> str:
        v = getattr(plan, match.group(1))
        if v is None:
            raise UsageError(f"the command's placeholder {{{match.group(1)}}} has no value yet: give its starting "
                             f"value with --set {match.group(1)}=VALUE")
        return str(v).lower() if isinstance(v, bool) else str(v)
    return [_PLACEHOLDER.sub(value, part) for part in command]


def worker_env(base: Mapping[str, str], attempt_dir: Path, overrides: Plan, plan: Plan,
               memory_cap: int | None, resume_from: str | None = None,
               evaluate_at: int | None = None, run_dir: Path | None = None, no_offload: bool = False,
               rung: str | None = None, reason: str = "", in_place: bool = True,
               in_place_checkpointing: bool = True, split_ahead: bool = True,
               allocator_shim: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("OOMLADDER_")}
    if not in_place or base.get("OOMLADDER_IN_PLACE") == "0":
        env["OOMLADDER_IN_PLACE"] = "0"  # --no-in-place: every OOM goes to the supervisor (worker/recovery/)
    if not split_ahead or base.get("OOMLADDER_SPLIT_AHEAD") == "0":
        env["OOMLADDER_SPLIT_AHEAD"] = "0"  # --no-split-ahead: steps run whole until they run out (worker/recovery/)
    if not in_place_checkpointing:
        env["OOMLADDER_IN_PLACE_CHECKPOINTING"] = "0"  # not on the ladder, or it broke this program
    if no_offload:
        env["OOMLADDER_NO_OFFLOAD"] = "1"
    if resume_from:
        env["OOMLADDER_RESUME_FROM"] = resume_from
    if evaluate_at is not None:
        env["OOMLADDER_RESUME_EVAL_AT"] = str(evaluate_at)
    # On several nodes the attempt folder is attempts/NNN/nodeR: the run directory is given, not guessed.
    run_dir = run_dir or attempt_dir.parent.parent
    env["OOMLADDER_RUN_DIR"] = str(run_dir)
    env["OOMLADDER_SUPERVISOR_PID"] = str(os.getpid())  # the adapter watches it: a dead supervisor stops the worker
    attempts = run_dir / "attempts"
    env["OOMLADDER_ATTEMPT"] = (attempt_dir.relative_to(attempts).parts[0] if attempt_dir.is_relative_to(attempts)
                                else attempt_dir.name)
    env["PYTHONPATH"] = os.pathsep.join([str(INJECT_DIR)] + ([base["PYTHONPATH"]] if base.get("PYTHONPATH") else []))
    env["OOMLADDER_ATTEMPT_DIR"] = str(attempt_dir)
    # The rung and why it was taken, for the program's own experiment tracker (worker/transformers/trainer.py).
    env["OOMLADDER_RUNG"] = rung or "start"
    env["OOMLADDER_REASON"] = reason or ""
    env["OOMLADDER_PLAN"] = json.dumps(overrides.set_fields())
    env["PYTHONUNBUFFERED"] = "1"  # the stderr tail must hold the last words, not a buffer
    for name, value in plan.set_fields().items():
        env[f"OOMLADDER_{name.upper()}"] = str(value)
    if plan.allocator:
        # Both names: PyTorch 2.9 renamed PYTORCH_CUDA_ALLOC_CONF, older releases read only the old one.
        env["PYTORCH_CUDA_ALLOC_CONF"] = env["PYTORCH_ALLOC_CONF"] = plan.allocator
    if memory_cap:
        env["OOMLADDER_MEMORY_CAP"] = str(memory_cap)
        if allocator_shim is not None:  # --cpu-cap allocator: the shim counts what is allocated (process/oomcap.c)
            env["OOMLADDER_CPU_CAP"] = "allocator"
            preload(env, allocator_shim)
        else:  # glibc reserves 64 MiB of address space per malloc arena: keep that overhead small and fixed.
            env.update({k: v for k, v in CPU_DEVICE_ALLOCATOR.items() if k not in env})
    return env
