"""`oomladder`: the command line. Bad input is one line on stderr and exit status 2, never a
traceback; a traceback means a bug in oomladder (exit status 70)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from collections.abc import Sequence

from supervisor import __version__
from supervisor.errors import RunDirError, UsageError

EXIT_INTERNAL = 70

EXIT_CODES_HELP = """exit status:
  0    training finished (after recovering, or with nothing to recover from)
  2    bad input: a flag, size, ladder file, command or run directory; nothing was run
  3    the worker failed for a reason no memory setting fixes (a bug, an unexplained kill, a hang twice)
  4    out of memory and no rung of the ladder left
  5    a budget ran out (--max-attempts, --max-wall-time)
  130  interrupted by SIGINT (Ctrl-C): run the same command again to continue
  143  stopped by SIGTERM (a scheduler's pre-emption): run the same command again to continue
  70   a bug in oomladder itself
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own two-line usage dump, as one line
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="oomladder", description="Run a training command; on out-of-memory, walk a fallback "
                     "ladder (bf16, 8-bit, smaller batch with more accumulation, checkpointing, fewer workers) "
                     "and run it again, keeping the effective batch.", epilog=EXIT_CODES_HELP,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"oomladder {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="{run,resume,report,plan,demo,strategies}", parser_class=_Parser)

    run = sub.add_parser("run", help="run a training command under the supervisor",
                         usage="oomladder run [options] -- COMMAND ...", epilog=EXIT_CODES_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _run_options(run)
    run.add_argument("command", nargs=argparse.REMAINDER, help="the training command, after --")

    resume = sub.add_parser("resume", help="continue a stopped run (even one whose supervisor was killed) on "
                            "the plan and from the checkpoint it reached", epilog=EXIT_CODES_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    resume.add_argument("run_dir")
    resume.add_argument("--node-rank", type=_nonnegative_int, metavar="R", help="on several nodes: this node's "
                        "index (default: from Slurm or torchrun's environment, as for run)")

    report = sub.add_parser("report", help="show the fallback report of a run directory")
    report.add_argument("run_dir")
    report.add_argument("--format", choices=("table", "md", "json"), default="table")

    plan = sub.add_parser("plan", help="estimate the peak memory of each rung of the ladder and say which plan "
                          "fits first, before launching anything")
    plan.add_argument("--model", required=True, metavar="PATH", help="a model folder (its config.json) or a config "
                      "file; nothing is loaded or downloaded")
    plan.add_argument("--seq-len", required=True, type=_positive_int, metavar="N", help="tokens per sequence")
    plan.add_argument("--batch-size", type=_positive_int, default=8, metavar="N", help="per-device batch (default 8)")
    plan.add_argument("--grad-accum", type=_positive_int, default=1, metavar="N",
                      help="gradient accumulation steps (default 1)")
    plan.add_argument("--lora-rank", type=_positive_int, metavar="R", help="train LoRA adapters of rank R (default: "
                      "every weight trains)")
    plan.add_argument("--lora-targets", default="q_proj,v_proj", metavar="NAMES",
                      help="the projections LoRA adapts (default q_proj,v_proj, peft's default for Llama)")
    plan.add_argument("--memory", metavar="SIZE", help="the device's size, e.g. 24GiB (default: the CUDA device here)")
    plan.add_argument("--device", choices=("cuda", "cpu"), default=None,
                      help="what the estimate is for (default cuda; cpu counts the checkpoint file mapped while it "
                      "loads, and no CUDA workspace)")
    plan.add_argument("--ladder", help="a YAML ladder file (default: the ladder shipped with oomladder)")
    plan.add_argument("--set", dest="settings", action="append", default=[], metavar="SETTING=VALUE",
                      help="a starting plan setting, e.g. precision=bf16 (repeatable; default: what a Trainer does "
                           "by default, fp32 and the checkpoint's dtype)")
    plan.add_argument("--format", choices=("table", "json"), default="table")

    demo = sub.add_parser("demo", help="the ladder at work on a tiny Llama fine-tune, on the CPU")
    demo.add_argument("--run-dir", default=None, help="where to keep the demo's run (default: a new folder "
                      "under ./oomladder-runs)")
    demo.add_argument("--memory-cap", default=None, help="the emulated device size (default: the demo's own)")

    sub.add_parser("strategies", help="list the strategies a ladder file can name")
    return parser


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ladder", help="a YAML ladder file (default: the ladder shipped with oomladder)")
    p.add_argument("--memory-cap", metavar="SIZE", help="emulate a device of SIZE (1200MiB, 16GiB, 1.5G): a CUDA "
                   "memory fraction on a GPU, an address-space limit on the CPU")
    p.add_argument("--run-dir", metavar="DIR", help="where the journal, logs and report go (default: a new "
                   "folder under ./oomladder-runs); the same DIR again continues that run")
    p.add_argument("--max-attempts", type=_positive_int, default=10, metavar="N",
                   help="stop after N attempts in this invocation (default 10)")
    p.add_argument("--max-wall-time", metavar="DURATION", help="stop (gracefully) after DURATION in all, e.g. 8h")
    p.add_argument("--hang-timeout", metavar="DURATION", help="a worker with no progress and no output for DURATION "
                   "is stopped and retried once on the same plan, e.g. 30m")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="SETTING=VALUE",
                   help="a starting value for a plan setting, e.g. per_device_train_batch_size=16 (repeatable); "
                        "needed for {placeholders} in a command that is not a Hugging Face Trainer program")
    nodes = p.add_argument_group("several nodes", "one oomladder per node, every one with the same shared --run-dir; "
                                 "the defaults come from srun (one task per node) or torchrun's PET_NNODES and "
                                 "PET_NODE_RANK")
    nodes.add_argument("--nnodes", type=_positive_int, metavar="N", help="how many nodes run this training")
    nodes.add_argument("--node-rank", type=_nonnegative_int, metavar="R", help="this node's index, 0 to N-1")
    nodes.add_argument("--node-timeout", metavar="DURATION", help="how long a node waits for the others at each "
                       "attempt's start and end (default 10m); above the longest time one node's ranks may run on "
                       "after another's ended (a final save, say)")


def _whole_number(minimum: int):
    """An argparse type: a whole number of at least `minimum`, with a one-line error otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"it must be {minimum} or more, not {value}")
        return value
    return parse


_positive_int = _whole_number(1)
_nonnegative_int = _whole_number(0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.verb == "run":
            return _run(args)
        if args.verb == "resume":
            return run_config(resume_config(Path(args.run_dir), args.node_rank), _console())
        if args.verb == "report":
            return _report(args)
        if args.verb == "plan":
            return _plan(args)
        if args.verb == "demo":
            from supervisor.demo import run_demo
            return run_demo(args.run_dir, args.memory_cap, _console())
        if args.verb == "strategies":
            return _strategies()
        build_parser().print_help()
        return 2
    except UsageError as exc:
        print(f"oomladder: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oomladder: interrupted", file=sys.stderr)
        return 130


def _console():
    import os
    from rich.console import Console
    console = Console()
    if not console.is_terminal:  # a log file: wide enough that a table row stays one line
        console = Console(width=int(os.environ.get("COLUMNS", 0)) or 140)
    return console


def make_run_config(args: argparse.Namespace):
    """Everything `run` needs, validated before anything starts."""
    import os

    from supervisor.ladder import load_ladder
    from supervisor.launch import placeholders
    from supervisor.nodes import topology
    from supervisor.runner import RunConfig
    from supervisor.units import parse_duration, parse_size

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command to run: put the training command after --, e.g. "
                         "oomladder run -- python train.py")
    _check_command(command)
    nodes = topology(args.nnodes, args.node_rank, os.environ)
    if nodes.multi and not args.run_dir:
        raise UsageError(f"--nnodes {nodes.nnodes} needs --run-dir: one folder every node shares (the default is a "
                         f"new folder on each node)")
    initial = _initial_plan(args.settings)
    missing = placeholders(command) - set(initial.set_fields())
    memory_cap = parse_size(args.memory_cap) if args.memory_cap else None
    ladder = load_ladder(args.ladder)
    run_dir = Path(args.run_dir) if args.run_dir else _new_run_dir()
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--run-dir '{run_dir}' is a file: give a directory")
    if missing and not (run_dir / "journal.jsonl").exists():
        raise UsageError(f"the command's placeholder {{{sorted(missing)[0]}}} has no starting value: add "
                         f"--set {sorted(missing)[0]}=VALUE")
    return RunConfig(command=tuple(command), run_dir=run_dir, ladder=ladder, memory_cap=memory_cap,
                     max_attempts=args.max_attempts, initial=initial,
                     max_wall_time=parse_duration(args.max_wall_time) if args.max_wall_time else None,
                     hang_timeout=parse_duration(args.hang_timeout) if args.hang_timeout else None,
                     nnodes=nodes.nnodes, node_rank=nodes.node_rank,
                     node_timeout=parse_duration(args.node_timeout) if args.node_timeout else 600.0)


def _initial_plan(items: list[str]):
    """The plan `--set NAME=VALUE ...` gives, checked field by field."""
    from supervisor.plan import Plan, coerce_field
    settings = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set takes SETTING=VALUE, not '{item}'")
        try:
            settings[name.strip()] = coerce_field(name.strip(), value.strip())
        except ValueError as exc:
            raise UsageError(f"--set {item}: {exc}") from None
    return Plan(**settings)


def _plan(args: argparse.Namespace) -> int:
    from supervisor import planning
    from supervisor.estimate import Workload
    from supervisor.ladder import load_ladder
    from supervisor.plan import Facts, Plan
    from supervisor.shape import from_config, read_config
    from supervisor.units import parse_size

    given = _initial_plan(args.settings)
    shape = from_config(read_config(args.model))
    ladder = load_ladder(args.ladder)
    device = args.device or "cuda"
    total = parse_size(args.memory) if args.memory else _cuda_memory()
    if total is None:
        raise UsageError("no CUDA device here to size the plan for: give --memory, the device's size (e.g. 24GiB)")
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    adapters = args.lora_rank is not None
    trainable = shape.lora_params(args.lora_rank, targets) if adapters else shape.params
    start = Plan(per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
                 per_device_eval_batch_size=args.batch_size, world_size=1, precision="fp32",
                 load_dtype=shape.dtype, quantization="none", gradient_checkpointing=False,
                 dataloader_num_workers=0, optim="adamw_torch_fused").merged(given)
    facts = Facts(device=device, bf16_supported=True, base_frozen=adapters,
                  trainable_fraction=trainable / shape.params if shape.params else None)
    work = Workload(start.per_device_train_batch_size, args.seq_len, adapters, trainable, targets)
    capacity = planning.usable(total, device, capped=False)
    rows = planning.walk(ladder, shape, start, work, facts, capacity)
    if args.format == "json":
        print(json.dumps(planning.to_json(rows, capacity), indent=2))
        return 0
    console = _console()
    what = f"LoRA r{args.lora_rank} on {','.join(targets)}" if adapters else "every weight trains"
    console.print(planning.render(rows, capacity, f"{args.model}: {shape.params / 1e9:.2f}B parameters, {what}, "
                                  f"batch {args.batch_size} x {args.seq_len} tokens, on {device} with "
                                  f"{_size(total)} ({_size(capacity)} usable)"))
    console.print(planning.verdict(rows, capacity), markup=False, highlight=False)
    console.print(planning.weights_line(shape), markup=False, highlight=False)
    return 0


def _size(n: int) -> str:
    from supervisor.units import format_size
    return format_size(n)


def _cuda_memory() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory


def _check_command(command: list[str]) -> None:
    """Catch the commonest typos before a run directory is made: no such program, no such script."""
    import re
    import shutil
    program = command[0]
    if shutil.which(program) is None:
        raise UsageError(f"cannot start '{program}': no such program (not a path to an executable, nor on PATH)")
    if re.search(r"python[\d.]*$", Path(program).name):
        args = iter(command[1:])
        for arg in args:
            if arg in ("-m", "-c", "-"):
                return
            if arg in ("-W", "-X"):  # options that take a value
                next(args, None)
                continue
            if arg.startswith("-"):
                continue
            if not Path(arg).exists():
                raise UsageError(f"the script '{arg}' does not exist (looked in {Path.cwd()}): check its path")
            return


def _new_run_dir() -> Path:
    base = Path("oomladder-runs") / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _run(args: argparse.Namespace) -> int:
    config = make_run_config(args)
    return run_config(config, _console())


def run_config(config, console) -> int:
    from supervisor.display import LineDisplay, LiveDisplay
    from supervisor.runner import Runner
    title = f"oomladder: {' '.join(config.command)}"
    display = LiveDisplay(console, title) if console.is_terminal else LineDisplay(console, title)
    code = Runner(config, display=display).run()
    console.print(f"report: {config.run_dir / 'report.md'} (again any time: oomladder report {config.run_dir})",
                  markup=False, highlight=False)
    return code


def _run_records(run_dir: Path, node: int = 0) -> list[dict]:
    from supervisor.journal import read_journal
    from supervisor.nodes import journal_path
    journal = journal_path(run_dir, node)
    if not journal.is_file():
        raise RunDirError(f"'{run_dir}' is not an oomladder run directory (it has no {journal.name}): give "
                          f"the --run-dir of a run")
    records = read_journal(journal)
    if not any(r.get("type") == "run_started" for r in records):
        raise RunDirError(f"'{run_dir}' has a journal with no run in it")
    return records


def resume_config(run_dir: Path, node_rank: int | None = None):
    """The run as its journal recorded it, to continue where it stopped; on several nodes, this node's journal."""
    import os

    from supervisor.history import fold
    from supervisor.ladder import ladder_from_journal
    from supervisor.nodes import topology
    from supervisor.plan import Plan
    from supervisor.runner import RunConfig

    node_rank = topology(None, node_rank, os.environ).node_rank if node_rank is None else node_rank
    view = fold(_run_records(run_dir, node_rank))
    if view.status == "finished":
        raise RunDirError(f"the run in '{run_dir}' already finished: there is nothing to resume (its report: "
                          f"{run_dir / 'report.md'})")
    started = view.run
    return RunConfig(command=tuple(started["command"]), run_dir=run_dir, ladder=ladder_from_journal(started["ladder"]),
                     memory_cap=started.get("memory_cap"), max_attempts=started.get("max_attempts") or 10,
                     max_wall_time=started.get("max_wall_time"), hang_timeout=started.get("hang_timeout"),
                     initial=Plan.from_dict(started.get("initial")), cwd=started.get("cwd") or str(Path.cwd()),
                     nnodes=started.get("nnodes", 1), node_rank=started.get("node_rank", 0),
                     node_timeout=started.get("node_timeout", 600.0))


def _report(args: argparse.Namespace) -> int:
    from supervisor.history import fold
    from supervisor.report import build_report, render_markdown

    view = fold(_run_records(Path(args.run_dir)))
    report = build_report(view)
    if args.format == "json":
        print(json.dumps(report, indent=2, default=str))
    elif args.format == "md":
        print(render_markdown(report), end="")
    else:
        from supervisor.render import print_report
        print_report(_console(), view, report)
    return 0


def _strategies() -> int:
    import strategies
    from strategies.base import Strategy
    for name in strategies.available():
        cls = strategies.get(name)
        own = cls.__doc__ if cls.__doc__ and cls.__doc__ is not Strategy.__doc__ else None
        doc = (own or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        params = ", ".join(cls.params) or "-"
        print(f"{name:24} memory: {'/'.join(sorted(cls.memory)):7} params: {params:10} {doc}")
    return 0


def entry() -> None:
    try:
        code = main()
    except Exception:
        import traceback
        traceback.print_exc()
        print("oomladder: this is a bug in oomladder; the run directory keeps its journal. Please report it with "
              "the traceback above.", file=sys.stderr)
        code = EXIT_INTERNAL
    sys.exit(code)


if __name__ == "__main__":
    entry()
