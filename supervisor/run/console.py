"""A run shown on a console: the live table on a terminal, a line per event in a log file."""

from __future__ import annotations

import contextlib

from rich.console import Console

from oomladder.run.config import RunConfig
from oomladder.run.loop import Runner
from oomladder.views.display import LineDisplay, LiveDisplay


def run_in_console(config: RunConfig, console: Console) -> int:
    title = f"oomladder: {' '.join(config.command)}"
    display = LiveDisplay(console, title) if console.is_terminal else LineDisplay(console, title)
    code = Runner(config, display=display).run()
    with contextlib.suppress(OSError):  # the terminal may have closed (SIGHUP): the run's end is in the journal
        console.print(f"report: {config.run_dir / 'report.html'} (and report.md; again any time: oomladder report "
                      f"{config.run_dir})", markup=False, highlight=False, soft_wrap=True)  # a path: never wrapped
    return code
