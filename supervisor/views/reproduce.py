"""How to run the final plan without oomladder: the `TrainingArguments(...)` and `from_pretrained(...)` values it
changes, the environment it needs, and the command to run.

The command is the last attempt's, with the plan's settings rewritten as flags where the program reads them from
its command line (HfArgumentParser, TRL's TrlParser: the worker saw it parse them, or the command already names
them). A setting the command carries through a {placeholder} is already the final plan's. Where the program reads
none of them as flags, the command is shown unchanged and the report says so: the settings then go into the
program's code, as the `TrainingArguments(...)` line shows. Pure: plans and commands in, data out.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from oomladder.plan import Plan, changes

# TrainingArguments' own names for the plan's settings that are arguments of the Trainer.
TRAINER_FIELDS = ("per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size",
                  "dataloader_num_workers", "optim")
LIGER = {"fused_linear_cross_entropy": True, "cross_entropy": False, "rope": False, "swiglu": False, "rms_norm": False}


def training_arguments(diff: dict[str, Any]) -> dict[str, Any]:
    """The TrainingArguments that differ from the program's own, by their names there."""
    args: dict[str, Any] = {name: diff[name] for name in TRAINER_FIELDS if name in diff}
    if "precision" in diff:
        args["bf16"], args["fp16"] = diff["precision"] == "bf16", diff["precision"] == "fp16"
    if diff.get("fused_cross_entropy"):
        args["use_liger_kernel"] = True
        args["liger_kernel_config"] = dict(LIGER)
    if diff.get("gradient_checkpointing"):
        args["gradient_checkpointing"] = True
        args["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    return args


def from_pretrained(diff: dict[str, Any]) -> dict[str, str]:
    load: dict[str, str] = {}
    if "load_dtype" in diff:
        load["dtype"] = f"torch.{diff['load_dtype']}"
    if diff.get("quantization") == "int8":
        load["quantization_config"] = "BitsAndBytesConfig(load_in_8bit=True)"
    elif diff.get("quantization") == "nf4":
        load["quantization_config"] = ("BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', "
                                       "bnb_4bit_use_double_quant=True)")
    return load


def flags(args: dict[str, Any]) -> list[tuple[str, str]]:
    """(flag, value) as HfArgumentParser reads them: `--bf16 True`, a dict as JSON."""
    return [(f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)) for key, value in args.items()]


def rewrite(command: list[str], wanted: list[tuple[str, str]]) -> list[str]:
    """`command` with each flag's value replaced where it stands (`--name value`, `--name=value`, the name with
    dashes for underscores), and the flags it lacks added at its end."""
    out, given = list(command), set()
    for flag, value in wanted:
        forms = {flag, flag.replace("_", "-")}
        for i, word in enumerate(out):
            name, eq, _ = word.partition("=")
            if name in forms and eq:
                out[i] = f"{name}={value}"
                given.add(flag)
            elif word in forms and i + 1 < len(out) and not out[i + 1].startswith("--"):
                out[i + 1] = value
                given.add(flag)
            elif word in forms:  # a bare boolean flag (`--bf16`): give it its value
                out[i] = f"{word}={value}"
                given.add(flag)
    return out + [word for flag, value in wanted if flag not in given for word in (flag, value)]


def names_flags(command: list[str], names: list[str]) -> bool:
    """Whether the command gives any of these TrainingArguments as flags already."""
    forms = {form for name in names for form in (f"--{name}", f"--{name.replace('_', '-')}")}
    return any(word.partition("=")[0] in forms for word in command)


def reproduce(before: Plan, after: Plan, command: list[str], original: list[str] | None = None,
              reads_flags: bool | None = None, widest: int = 1) -> dict[str, Any]:
    """The final plan as code, flags and a command. `command`: the last attempt's (placeholders filled in);
    `original`: the command as given (with its placeholders); `reads_flags`: the worker saw the program read its
    TrainingArguments from its command line; `widest`: the most chunks split ahead ran a step in. Without
    oomladder nothing sizes each step, so the plan to run is the one that fits every step: that split of it."""
    static = after.split(widest) if widest > 1 else after
    sized = (f"oomladder sized each step and ran the longest in {widest} chunks; without it, this plan fits every "
             f"step. " if static != after else "")
    after = static
    diff = {name: new for name, _old, new in changes(before, after)}
    args = training_arguments(diff)
    load = from_pretrained(diff)
    env = ({"PYTORCH_CUDA_ALLOC_CONF": after.allocator, "PYTORCH_ALLOC_CONF": after.allocator}
           if after.allocator and "allocator" in diff else {})
    carried = set(re.findall(r"{(\w+)}", " ".join(original or [])))  # placeholders: already the final plan's
    wanted = [(flag, value) for flag, value in flags(args) if not (carried & _fields_of(flag[2:]))]
    rewritten = bool(command) and bool(wanted) and (bool(reads_flags) or names_flags(command, list(args)))
    final = rewrite(command, wanted) if rewritten else list(command)
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    if not command:
        note = ""
    elif rewritten or not wanted:
        note = ("The program's command with the final plan's flags" if rewritten else "The command of the last "
                "attempt, which already runs the final plan") + (
            "; the from_pretrained(...) settings above are not flags of it, and go into its code" if load else "")
    else:
        note = ("The command of the last attempt, unchanged: the program does not read its TrainingArguments from "
                "its command line, so the settings above go into its code")
    return {
        "training_arguments": args, "from_pretrained": load, "environment": env,
        "hf_argument_flags": shlex.join(word for pair in flags(args) for word in pair),
        "command": (prefix + " " if prefix else "") + shlex.join(final) if command else "",
        "command_rewritten": rewritten, "command_note": (sized + note) if note else "",
    }


def _fields_of(argument: str) -> set[str]:
    """The plan settings a TrainingArguments name stands for (a placeholder of either carries it)."""
    return {"bf16": {"precision"}, "fp16": {"precision"}, "use_liger_kernel": {"fused_cross_entropy"},
            "liger_kernel_config": {"fused_cross_entropy"}, "gradient_checkpointing_kwargs": {"gradient_checkpointing"},
            }.get(argument, {argument})
