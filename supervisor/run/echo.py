"""The program's own output, shown as it comes, as torchrun shows its ranks': the lines the workers write to
attempts/NNN/stdout.log and stderr.log, read from where the last look stopped. The files stay the record
(the worker writes them directly, so nothing is lost if the supervisor is slow or dies); this only shows them.
`echoing` wraps the launcher: each poll of a worker group shows what it wrote since, and its reaping the rest.

A line a launcher already marked with its rank (torchrun's `[rank1]:`, or `[default1]:` under `--tee`) keeps
that rank. An unmarked line is rank 0's where the program is one process; where several ranks share the
files, nothing says which wrote it, so it is shown with its attempt alone.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from oomladder.process.workers import Launcher, LaunchSpec, WorkerHandle
from oomladder.views.display import Display, ProgramLine

CHUNK = 256 * 1024   # bytes read from each file at one look: a flood of output cannot stall the watcher
BACKLOG = 4 << 20    # unread bytes past which the console skips to the newest output (the log keeps it all)
LONGEST = 16 * 1024  # a line that long with no end in sight is shown in pieces
_RANK = re.compile(r"^\[(?:rank|default)?(\d+)\]:\s?")
_LAUNCHERS = ("torchrun", "torch.distributed.run", "torch.distributed.launch", "deepspeed")


def launches_ranks(argv: Sequence[str]) -> bool:
    """The command is a launcher that starts several ranks (torchrun, accelerate launch, deepspeed)."""
    names = [Path(a).name for a in argv]
    return any(n in _LAUNCHERS for n in names) or any(
        a == "accelerate" and b == "launch" for a, b in zip(names, names[1:]))


def cleaned(raw: bytes) -> str:
    """A line as a terminal would leave it: for a progress bar redrawn with carriage returns, its last state."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    states = [s for s in text.split("\r") if s.strip()]
    return (states[-1] if states else "").rstrip()


class _Tail:
    """One file, read onwards from where the last look stopped; a line not yet ended is kept for the next."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""
        self.skipped = 0  # bytes passed over since the last look, when the program wrote faster than it is shown

    def lines(self, everything: bool) -> list[bytes]:
        found: list[bytes] = []
        while True:
            try:
                with open(self.path, "rb") as f:
                    size, behind = f.seek(0, 2), False
                    if size - self.offset > BACKLOG:
                        self.skipped += size - CHUNK - self.offset
                        self.offset, self.partial, behind = size - CHUNK, b"", True
                    f.seek(self.offset)
                    data = f.read(CHUNK)
            except OSError:  # not there yet
                return found
            self.offset += len(data)
            got = len(data)
            if behind and b"\n" in data:
                data = data[data.index(b"\n") + 1:]  # from the first whole line after the skip
            *ended, self.partial = (self.partial + data).split(b"\n")
            found += ended
            if len(self.partial) > LONGEST:
                found.append(self.partial)
                self.partial = b""
            if not everything or got < CHUNK:
                break
        if everything and self.partial:  # the program ended: its last words, newline or not
            found.append(self.partial)
            self.partial = b""
        return found


class Echo:
    """The program's output for one attempt. `several()` says whether several ranks share its files, as far as
    the supervisor knows by now."""

    def __init__(self, attempt: int, files: Sequence[Path], several: Callable[[], bool]) -> None:
        self.attempt, self.several = attempt, several
        self._tails = [_Tail(Path(f)) for f in files]

    def lines(self, final: bool = False) -> list[ProgramLine]:
        """The lines ended since the last look; `final`: every line left, once the program is gone."""
        shown = []
        for tail in self._tails:
            raw = tail.lines(everything=final)
            if tail.skipped:
                shown.append(ProgramLine(self.attempt, None, f"... {tail.skipped / 2**20:.0f} MiB of output not shown "
                                                             f"here: {tail.path} has it all"))
                tail.skipped = 0
            shown += [self._line(text) for text in map(cleaned, raw) if text]
        return shown

    def pending(self) -> ProgramLine | None:
        """The line the program is writing now (a progress bar, redrawn in place), if any."""
        for tail in reversed(self._tails):  # stderr first: where progress bars go
            text = cleaned(tail.partial)
            if text:
                return self._line(text)
        return None

    def _line(self, text: str) -> ProgramLine:
        marked = _RANK.match(text)
        if marked:
            return ProgramLine(self.attempt, int(marked.group(1)), text[marked.end():])
        return ProgramLine(self.attempt, None if self.several() else 0, text)


def echoing(launcher: Launcher, display: Display) -> Launcher:
    """`launcher`, with each worker group's output shown on `display` (unless it shows none: --quiet)."""
    if not display.shows_output:
        return launcher

    @functools.wraps(launcher)  # still the real launcher underneath (inspect.unwrap): its attempts get cgroups
    def launch(spec: LaunchSpec) -> WorkerHandle:
        return Echoing(launcher(spec), echo_for(spec), display)
    return launch


def echo_for(spec: LaunchSpec) -> Echo:
    """The attempt's number and whether several ranks share its files, from what the attempt is launched with."""
    folder = Path(spec.env.get("OOMLADDER_ATTEMPT_DIR", spec.stdout.parent))
    launcher = launches_ranks(spec.argv) or int(spec.env.get("OOMLADDER_WORLD_SIZE", "1") or 1) > 1
    seen = [launcher]

    def several() -> bool:  # every rank's adapter writes its own files: one from rank 1 on says so
        seen[0] = seen[0] or any(folder.glob("observed.[1-9]*.json")) or any(folder.glob("progress.[1-9]*.jsonl"))
        return seen[0]
    return Echo(int(spec.env.get("OOMLADDER_ATTEMPT", "0") or 0), (spec.stdout, spec.stderr), several)


class Echoing:
    """A worker group whose new output is shown each time it is polled, and the rest once it is reaped (before
    the supervisor says what it makes of the attempt's end)."""

    def __init__(self, handle: WorkerHandle, echo: Echo, display: Display) -> None:
        self.handle, self.echo, self.display = handle, echo, display
        self.pid = handle.pid

    def poll(self) -> int | None:
        self.display.output(self.echo.lines(), self.echo.pending())
        return self.handle.poll()

    def stop(self, *args: Any, **kwargs: Any) -> int:
        return self.handle.stop(*args, **kwargs)

    def reap_group(self) -> None:
        self.handle.reap_group()
        self.display.output(self.echo.lines(final=True), None)

    def __getattr__(self, name: str) -> Any:  # the rest of the real handle, as it is
        return getattr(self.handle, name)
