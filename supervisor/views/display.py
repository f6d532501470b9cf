"""Where the run shows itself: a live rich table on a terminal, a line per event in a log file
(an overnight job's stdout), nothing in tests. All three read the same `RunView`."""

from __future__ import annotations

import os
import time
from typing import Protocol

from rich.console import Console, Group
from rich.live import Live

from oomladder.record.history import RunView
from oomladder.views.bars import peak_bars, running_progress
from oomladder.views.table import attempts_table


def make_console() -> Console:
    """rich's console, or on a log file one wide enough that a table row stays one line."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=int(os.environ.get("COLUMNS", 0)) or 140)
    return console


class Display(Protocol):
    live: bool  # redraws while an attempt runs, so it wants fresh views

    def update(self, view: RunView) -> None: ...

    def event(self, text: str) -> None: ...

    def close(self, view: RunView) -> None: ...


class NullDisplay:
    live = False

    def update(self, view: RunView) -> None:
        pass

    def event(self, text: str) -> None:
        pass

    def close(self, view: RunView) -> None:
        pass


class Unbreakable:
    """A display whose console went away (the terminal closed, the pipe's reader left: EIO, EPIPE) goes quiet;
    the run goes on, and the journal and the report still say everything."""

    def __init__(self, display: Display) -> None:
        self.display, self.broken = display, False
        self.live = display.live

    def update(self, view: RunView) -> None:
        self._quietly(self.display.update, view)

    def event(self, text: str) -> None:
        self._quietly(self.display.event, text)

    def close(self, view: RunView) -> None:
        self._quietly(self.display.close, view)

    def _quietly(self, method, arg) -> None:
        if self.broken:
            return
        try:
            method(arg)
        except OSError:
            self.broken, self.live = True, False


class LiveDisplay:
    """The attempts table redrawn in place, with the running attempt's progress bar under it; events print
    above it. At the end, each attempt's peak against the cap."""

    live = True

    def __init__(self, console: Console, title: str) -> None:
        self.console, self.title = console, title
        self._view: RunView | None = None
        self._live = Live(get_renderable=self._render, console=console, refresh_per_second=2, transient=False)
        self._live.start()

    def _render(self):
        if self._view is None:
            return ""
        now = time.time()
        table = attempts_table(self._view, now=now, title=self.title)
        progress = running_progress(self._view, now)
        return table if progress is None else Group(table, progress)

    def update(self, view: RunView) -> None:
        self._view = view

    def event(self, text: str) -> None:
        self._live.console.print(text, markup=False, highlight=False)

    def close(self, view: RunView) -> None:
        self._view = view
        self._live.stop()
        _print_peaks(self.console, view)


class LineDisplay:
    """One line per event and the table at the end: readable in a log file."""

    live = False

    def __init__(self, console: Console, title: str) -> None:
        self.console, self.title = console, title

    def update(self, view: RunView) -> None:
        pass

    def event(self, text: str) -> None:
        self.console.print(f"oomladder: {text}", markup=False, highlight=False, soft_wrap=True)

    def close(self, view: RunView) -> None:
        self.console.print(attempts_table(view, now=time.time(), title=self.title))
        _print_peaks(self.console, view)


def _print_peaks(console: Console, view: RunView) -> None:
    bars = peak_bars(view)
    if bars is not None:
        console.print(bars)
