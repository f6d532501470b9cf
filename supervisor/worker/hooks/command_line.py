"""What the program reads from its command line: whether its TrainingArguments come from there (HfArgumentParser,
TRL's TrlParser, as Transformers' run_clm.py reads them). The report's command to run the final plan without
oomladder is then the program's own command with its flags rewritten (views/reproduce.py)."""

from __future__ import annotations

import functools
import sys

from oomladder.worker.common import observe, safely

HOOKS = {"transformers.hf_argparser": lambda module: patch_argument_parser(module)}


def patch_argument_parser(module) -> None:
    """Whether the program reads its TrainingArguments from its command line (HfArgumentParser, TRL's TrlParser):
    then the report's command to run the final plan without oomladder is the program's command with its flags
    rewritten, not only a `TrainingArguments(...)` line."""
    cls = module.HfArgumentParser
    original = cls.parse_args_into_dataclasses

    @functools.wraps(original)
    def parse_args_into_dataclasses(self, args=None, *rest, **kwargs):
        parsed = original(self, args, *rest, **kwargs)
        if args is None or list(args) == sys.argv[1:]:
            from transformers import TrainingArguments
            if any(isinstance(item, TrainingArguments) for item in parsed):
                safely(observe, None, {"reads_flags": True})
        return parsed

    cls.parse_args_into_dataclasses = parse_args_into_dataclasses
