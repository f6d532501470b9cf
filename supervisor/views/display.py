"""Where the run shows itself: a live rich table on a terminal, a line per event in a log file
(an overnight job's stdout), nothing in tests. All three read the same `RunView`.

Above the table, or between the events, the program's own output, a line at a time with its attempt and rank
(run/echo.py reads it), unless `--quiet`; with `--verbose`, the arithmetic behind each decision too."""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from oomladder.record.history import RunView
from oomladder.views.bars import peak_bars, running_progress
from oomladder.views.table import attempts_table


def make_console() -> Console:
    """rich's console, or on a log file one wide enough that a table row stays one line."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=int(os.environ.get("COLUMNS", 0)) or 140)
    return console


class Verbosity(enum.IntEnum):
    QUIET = 0    # --quiet: oomladder's own lines alone
    NORMAL = 1   # and the program's own output
    VERBOSE = 2  # --verbose: and the arithmetic behind each decision


@dataclass(frozen=True)
class ProgramLine:
    """A line the program wrote, with where it came from: its attempt, and its rank where that is known."""

    attempt: int
    rank: int | None
    text: str

    def shown(self) -> Text:
        """`[attempt 2 rank 0] {'loss': 1.23}`; the program's own colours kept (on a terminal)."""
        who = f"attempt {self.attempt}" + (f" rank {self.rank}" if self.rank is not None else "")
        return Text(f"[{who}] ", style="dim") + Text.from_ansi(self.text)


class Display(Protocol):
    live: bool  # redraws while an attempt runs, so it wants fresh views
    shows_output: bool  # wants the program's own output (not --quiet)
    verbose: bool  # wants the arithmetic behind each decision (--verbose)

    def update(self, view: RunView) -> None: ...

    def event(self, text: str) -> None: ...

    def output(self, lines: list[ProgramLine], pending: ProgramLine | None) -> None: ...

    def detail(self, text: str) -> None: ...

    def close(self, view: RunView) -> None: ...


class NullDisplay:
    live = shows_output = verbose = False

    def update(self, view: RunView) -> None:
        pass

    def event(self, text: str) -> None:
        pass

    def output(self, lines: list[ProgramLine], pending: ProgramLine | None) -> None:
        pass

    def detail(self, text: str) -> None:
        pass

    def close(self, view: RunView) -> None:
        pass


class Unbreakable:
    """A display whose console went away (the terminal closed, the pipe's reader left: EIO, EPIPE) goes quiet;
    the run goes on, and the journal and the report still say everything."""

    def __init__(self, display: Display) -> None:
        self.display, self.broken = display, False
        self.live = display.live
        # A display of events alone (a test's) wants neither.
        self.shows_output = getattr(display, "shows_output", False)
        self.verbose = getattr(display, "verbose", False)

    def update(self, view: RunView) -> None:
        self._quietly(self.display.update, view)

    def event(self, text: str) -> None:
        self._quietly(self.display.event, text)

    def output(self, lines: list[ProgramLine], pending: ProgramLine | None) -> None:
        if self.shows_output:
            self._quietly(self.display.output, lines, pending)

    def detail(self, text: str) -> None:
        if self.verbose:
            self._quietly(self.display.detail, text)

    def explain(self, lines: Callable[[], list[str]]) -> None:
        """--verbose: the lines, worked out only where they are shown. Arithmetic that fails to be put in words
        must not cost the run: one line says so instead."""
        if not self.verbose:
            return
        try:
            said = lines()
        except Exception as exc:  # noqa: BLE001
            said = [f"the arithmetic could not be shown ({type(exc).__name__}: {exc})"]
        for text in said:
            self.detail(text)

    def close(self, view: RunView) -> None:
        self._quietly(self.display.close, view)

    def _quietly(self, method, *args) -> None:
        if self.broken:
            return
        try:
            method(*args)
        except OSError:
            self.broken, self.live, self.shows_output, self.verbose = True, False, False, False


class LiveDisplay:
    """The attempts table redrawn in place, with the running attempt's progress bar under it; events print
    above it. At the end, each attempt's peak against the cap."""

    live = True

    def __init__(self, console: Console, title: str, verbosity: Verbosity = Verbosity.NORMAL) -> None:
        self.console, self.title = console, title
        self.shows_output, self.verbose = verbosity >= Verbosity.NORMAL, verbosity >= Verbosity.VERBOSE
        self._view: RunView | None = None
        self._pending: ProgramLine | None = None  # the line the program is still writing (a progress bar)
        self._live = Live(get_renderable=self._render, console=console, refresh_per_second=2, transient=False)
        self._live.start()

    def _render(self):
        if self._view is None:
            return ""
        now = time.time()
        parts = [self._pending.shown()] if self._pending is not None else []
        parts.append(attempts_table(self._view, now=now, title=self.title))
        progress = running_progress(self._view, now)
        if progress is not None:
            parts.append(progress)
        return parts[0] if len(parts) == 1 else Group(*parts)

    def update(self, view: RunView) -> None:
        self._view = view

    def event(self, text: str) -> None:
        self._live.console.print(text, markup=False, highlight=False)

    def output(self, lines: list[ProgramLine], pending: ProgramLine | None) -> None:
        self._pending = pending
        if lines:  # one print for the lot: each print redraws the table under it
            self._live.console.print(Text("\n").join(line.shown() for line in lines))

    def detail(self, text: str) -> None:
        self._live.console.print(Text(f"  {text}", style="dim"))

    def close(self, view: RunView) -> None:
        self._view, self._pending = view, None
        self._live.stop()
        _print_peaks(self.console, view)


class LineDisplay:
    """One line per event and the table at the end: readable in a log file."""

    live = False

    def __init__(self, console: Console, title: str, verbosity: Verbosity = Verbosity.NORMAL) -> None:
        self.console, self.title = console, title
        self.shows_output, self.verbose = verbosity >= Verbosity.NORMAL, verbosity >= Verbosity.VERBOSE

    def update(self, view: RunView) -> None:
        pass

    def event(self, text: str) -> None:
        self.console.print(f"oomladder: {text}", markup=False, highlight=False, soft_wrap=True)

    def output(self, lines: list[ProgramLine], pending: ProgramLine | None) -> None:
        for line in lines:  # a log file: whole lines, never wrapped; a progress bar only once it ends
            self.console.print(line.shown(), soft_wrap=True)

    def detail(self, text: str) -> None:
        self.console.print(f"oomladder:   {text}", markup=False, highlight=False, soft_wrap=True)

    def close(self, view: RunView) -> None:
        self.console.print(attempts_table(view, now=time.time(), title=self.title))
        _print_peaks(self.console, view)


def _print_peaks(console: Console, view: RunView) -> None:
    bars = peak_bars(view)
    if bars is not None:
        console.print(bars)
