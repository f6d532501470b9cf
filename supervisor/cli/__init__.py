"""`oomladder`: the command line. Bad input is one line on stderr and exit status 2, never a
traceback; a traceback means a bug in oomladder (exit status 70).

parser.py holds the grammar, commands.py and plan.py what each verb does. Imports of the heavier
layers happen inside the verbs, so `oomladder --help` stays quick.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from oomladder.cli.parser import build_parser
from oomladder.errors import UsageError

EXIT_INTERNAL = 70


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args)
    except UsageError as exc:
        print(f"oomladder: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oomladder: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (`oomladder report DIR | head`): not an error. Python would complain again when it
        # flushes stdout at exit, so stdout goes nowhere from here.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _dispatch(args) -> int:
    from oomladder.cli import commands
    from oomladder.views.display import make_console
    if args.verb == "run":
        return commands.run(args)
    if args.verb == "resume":
        from oomladder.run.console import run_in_console
        return run_in_console(commands.resume_config(Path(args.run_dir), args.node_rank, args.notify_config),
                              make_console(), commands.verbosity(args))
    if args.verb == "report":
        return commands.report(args)
    if args.verb == "plan":
        from oomladder.cli.plan import plan
        return plan(args)
    if args.verb == "demo":
        from oomladder.demo import run_demo
        return run_demo(args.run_dir, args.memory_cap, make_console(), in_place=args.in_place,
                        verbosity=commands.verbosity(args), cpu_cap=commands.cpu_cap(args.cpu_cap))
    if args.verb == "strategies":
        from oomladder.cli.strategies import list_strategies
        return list_strategies(make_console())
    build_parser().print_help()
    return 2


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
