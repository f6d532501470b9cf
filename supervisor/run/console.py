"""A run shown on a console: the live table on a terminal, a line per event in a log file, and the program's
own output above them."""

from __future__ import annotations

import contextlib

from rich.console import Console

from oomladder.process.workers import spawn
from oomladder.run.config import RunConfig
from oomladder.run.echo import echoing
from oomladder.run.loop import Runner
from oomladder.views.display import LineDisplay, LiveDisplay, Unbreakable, Verbosity


def run_in_console(config: RunConfig, console: Console, verbosity: Verbosity = Verbosity.NORMAL) -> int:
    title = f"oomladder: {' '.join(config.command)}"
    kind = LiveDisplay if console.is_terminal else LineDisplay
    display = Unbreakable(kind(console, title, verbosity))
    # The program's own output above the table, as it comes (run/echo.py), unless --quiet.
    code = Runner(config, display=display, launcher=echoing(spawn, display)).run()
    with contextlib.suppress(OSError):  # the terminal may have closed (SIGHUP): the run's end is in the journal
        console.print(f"report: {config.run_dir / 'report.html'} (and report.md; again any time: oomladder report "
                      f"{config.run_dir})", markup=False, highlight=False, soft_wrap=True)  # a path: never wrapped
    return code
