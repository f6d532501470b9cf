"""What each verb does once its arguments parse: `run`, `resume` and `report` (`plan` is cli/plan.py,
`strategies` cli/strategies.py). Everything a run needs is checked before a run directory is made."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from oomladder.errors import RunDirError, UsageError
from oomladder.ladder import ladder_from_journal, load_ladder
from oomladder.nodes.topology import journal_path, topology
from oomladder.plan import Plan, coerce_field
from oomladder.process.allocator import MODES
from oomladder.process.launch import placeholders
from oomladder.record.history import RunView
from oomladder.record.journal import fold_journal
from oomladder.run.config import RunConfig
from oomladder.run.console import run_in_console
from oomladder.run.notify import ENVIRONMENT, IN_ARGV, check_targets, services, targets
from oomladder.status import RunStatus
from oomladder.units import parse_duration, parse_size
from oomladder.views.console import print_report
from oomladder.views.display import Verbosity, make_console
from oomladder.views.html import render_html
from oomladder.views.report import build_report, render_markdown


def run(args: argparse.Namespace) -> int:
    return run_in_console(make_run_config(args), make_console(), verbosity(args))


def verbosity(args: argparse.Namespace) -> Verbosity:
    """--quiet: oomladder's own lines alone; --verbose: and the arithmetic behind each decision."""
    return Verbosity.QUIET if args.quiet else Verbosity.VERBOSE if args.verbose else Verbosity.NORMAL


def make_run_config(args: argparse.Namespace):
    """Everything `run` needs, validated before anything starts."""


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
    initial = initial_plan(args.settings)
    missing = placeholders(command) - set(initial.set_fields())
    memory_cap = parse_size(args.memory_cap, "--memory-cap") if args.memory_cap else None
    ladder = load_ladder(args.ladder)
    run_dir = Path(args.run_dir) if args.run_dir else _new_run_dir()
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--run-dir '{run_dir}' is a file: give a directory")
    if missing and not (run_dir / "journal.jsonl").exists():
        raise UsageError(f"the command's placeholder {{{sorted(missing)[0]}}} has no starting value: add "
                         f"--set {sorted(missing)[0]}=VALUE")
    notify, notify_config = targets(args.notify, os.environ), _absolute(args.notify_config)
    check_targets(notify, os.environ, notify_config)
    if args.notify:
        print(f"oomladder: warning: {IN_ARGV}", file=sys.stderr)
    return RunConfig(command=tuple(command), run_dir=run_dir, ladder=ladder, memory_cap=memory_cap,
                     max_attempts=args.max_attempts, initial=initial, notify=notify, notify_config=notify_config,
                     max_wall_time=parse_duration(args.max_wall_time) if args.max_wall_time else None,
                     hang_timeout=parse_duration(args.hang_timeout) if args.hang_timeout else None,
                     nnodes=nodes.nnodes, node_rank=nodes.node_rank,
                     node_timeout=parse_duration(args.node_timeout) if args.node_timeout else 600.0,
                     no_offload=args.no_offload,
                     in_place=not (args.no_in_place or os.environ.get("OOMLADDER_IN_PLACE") == "0"),
                     split_ahead=not (args.no_split_ahead or os.environ.get("OOMLADDER_SPLIT_AHEAD") == "0"),
                     cpu_cap=cpu_cap(args.cpu_cap))


def cpu_cap(flag: str | None) -> str:
    mode = flag or os.environ.get("OOMLADDER_CPU_CAP") or "auto"
    if mode not in MODES:
        raise UsageError(f"OOMLADDER_CPU_CAP={mode} is not a way to count the CPU cap: use one of {', '.join(MODES)}")
    return mode


def initial_plan(items: list[str]):
    """The plan `--set NAME=VALUE ...` gives, checked field by field."""
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


def _check_command(command: list[str]) -> None:
    """Catch the commonest typos before a run directory is made: no such program, no such script."""
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


def run_view(run_dir: Path, node: int = 0) -> RunView:
    """The run a directory's journal holds, read as it streams; one line of what is wrong otherwise."""
    journal = journal_path(run_dir, node)
    if not run_dir.exists():
        raise RunDirError(f"'{run_dir}' does not exist: give the --run-dir of a run (a folder under "
                          f"./oomladder-runs unless --run-dir named another)")
    if not journal.is_file():
        raise RunDirError(f"'{run_dir}' is not an oomladder run directory (it has no {journal.name}): give "
                          f"the --run-dir of a run")
    try:
        view = fold_journal(journal)
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"the journal '{journal}' cannot be read ({exc}): check its permissions") from None
    if not view.run or "command" not in view.run:
        raise RunDirError(f"'{run_dir}' has a journal with no run in it")
    return view


def resume_config(run_dir: Path, node_rank: int | None = None, notify_config: str | None = None):
    """The run as its journal recorded it, to continue where it stopped; on several nodes, this node's journal."""
    node_rank = topology(None, node_rank, os.environ).node_rank if node_rank is None else node_rank
    view = run_view(run_dir, node_rank)
    if view.status is RunStatus.FINISHED:
        raise RunDirError(f"the run in '{run_dir}' already finished: there is nothing to resume (its report: "
                          f"{run_dir / 'report.md'})")
    started = view.run
    notify, notify_config = _resumed_targets(started, notify_config)
    return RunConfig(command=tuple(started["command"]), run_dir=run_dir, ladder=ladder_from_journal(started["ladder"]),
                     memory_cap=started.get("memory_cap"), max_attempts=started.get("max_attempts") or 10,
                     max_wall_time=started.get("max_wall_time"), hang_timeout=started.get("hang_timeout"),
                     initial=Plan.from_dict(started.get("initial")), cwd=started.get("cwd") or str(Path.cwd()),
                     nnodes=started.get("nnodes", 1), node_rank=started.get("node_rank", 0),
                     node_timeout=started.get("node_timeout", 600.0), no_offload=bool(started.get("no_offload")),
                     in_place=started.get("in_place", True), split_ahead=started.get("split_ahead", True),
                     cpu_cap=started.get("cpu_cap", "address-space"),  # a run from before --cpu-cap: as it began
                     notify=notify, notify_config=notify_config)


def _resumed_targets(started: dict, given: str | None) -> tuple[tuple[str, ...], str | None]:
    """The targets a resumed run tells: $OOMLADDER_NOTIFY's and the config file's (the one given, or the run's
    own). URLs are not kept on disk: a target the run had that is not given again is named in a warning."""
    kept = started.get("notify_config") if isinstance(started.get("notify_config"), str) else None
    config = _absolute(given) or (kept if kept and Path(kept).is_file() else None)
    if kept and not given and config is None:
        print(f"oomladder: warning: the run's --notify-config '{kept}' is gone: no targets from it", file=sys.stderr)
    notify = targets((), os.environ)
    found = {name for name, _ in services(notify, config, os.environ)}
    lost = [name for name in started.get("notify_targets") or () if isinstance(name, str) and name not in found]
    if lost:
        print(f"oomladder: warning: this run notified {', '.join(lost)}, which is not given now (a URL is never kept "
              f"on disk): give it through ${ENVIRONMENT} or --notify-config FILE", file=sys.stderr)
    return notify, config


def _absolute(path: str | None) -> str | None:
    return str(Path(path).absolute()) if path else None


def report(args: argparse.Namespace) -> int:

    view = run_view(Path(args.run_dir))
    report = build_report(view)
    if args.format == "json":
        print(json.dumps(report, indent=2, default=str))
    elif args.format == "md":
        print(render_markdown(report), end="")
    elif args.format == "html":
        print(render_html(report), end="")
    else:
        print_report(make_console(), view, report)
    return 0
