"""IPython's side of `%load_ext oomladder`: the run begins when the cell that loads the extension ends (or at
`%oomladder --run-dir DIR --memory-cap SIZE --ladder FILE` in that cell, which chooses where the run lives, the
emulated device's size and the ladder, or continues the run in DIR after a kernel restart), and each later cell is
taken in when it ends. Output goes to the cell that caused it, through rich, which renders in notebooks."""

from __future__ import annotations

import argparse
import shlex
import shutil
from pathlib import Path
from typing import Any

from oomladder.errors import UsageError
from oomladder.ladder import Ladder, load_ladder
from oomladder.notebook.kernel_run import COMMAND, KernelRunner, default_run_dir
from oomladder.record import schema
from oomladder.run.config import RunConfig
from oomladder.units import format_size, parse_size

_session: dict[str, Any] = {"runner": None, "made": None, "loaded": False, "ipython": None}


def load(ipython) -> None:
    if _session["loaded"]:
        return
    _session.update(loaded=True, ipython=ipython)
    ipython.register_magic_function(magic, "line", "oomladder")
    ipython.events.register("post_run_cell", _after_cell)


def unload(ipython) -> None:
    ipython.events.unregister("post_run_cell", _after_cell)
    _session.update(runner=None, made=None, loaded=False)


def magic(line: str) -> None:
    """%oomladder [--run-dir DIR] [--memory-cap SIZE] [--ladder FILE]: run this kernel's training in DIR (a run begun
    there before a kernel restart goes on), under a cap of SIZE, on the ladder in FILE."""
    parser = argparse.ArgumentParser(prog="%oomladder", add_help=False)
    for option in ("--run-dir", "--memory-cap", "--ladder"):
        parser.add_argument(option)
    try:
        options, unknown = parser.parse_known_args(shlex.split(line))
        if unknown:
            raise UsageError(f"%oomladder does not know {' '.join(unknown)}: give --run-dir DIR, --memory-cap SIZE, "
                             f"--ladder FILE")
        cap = parse_size(options.memory_cap) if options.memory_cap else None
        ladder = load_ladder(options.ladder)
    except (UsageError, ValueError) as exc:
        _show(f"oomladder: {exc}")
        return
    old = _session["runner"]
    if old is not None and _trained(old):
        _show(f"oomladder: this kernel already trains in {old.config.run_dir}: give --run-dir, --memory-cap and "
              f"--ladder before training starts (restart the kernel to begin another run)")
        return
    made = _session["made"]
    if _begin(Path(options.run_dir) if options.run_dir else default_run_dir(), cap, ladder) and made is not None:
        shutil.rmtree(made, ignore_errors=True)  # begun a moment ago with the defaults, and still empty


def _begin(run_dir: Path, memory_cap: int | None, ladder: Ladder) -> bool:
    new = not run_dir.exists()
    try:
        runner = KernelRunner.begin(RunConfig(command=COMMAND, run_dir=run_dir, ladder=ladder, memory_cap=memory_cap),
                                    _show)
    except UsageError as exc:
        _show(f"oomladder: {exc}")
        return False
    _session.update(runner=runner, made=runner.config.run_dir if new else None)
    cap = f", under a {format_size(memory_cap)} cap" if memory_cap else ""
    _show(f"oomladder: Trainer steps in this kernel recover from out-of-memory errors in place{cap}; the journal and "
          f"the report are in {runner.config.run_dir}")
    return True


def _after_cell(result) -> None:
    runner = _session["runner"]
    if runner is None:  # the cell that loaded the extension, without %oomladder: the defaults
        _begin(default_run_dir(), None, load_ladder(None))
        return
    try:
        runner.after_cell(getattr(result, "error_in_exec", None))
    except Exception as exc:  # oomladder's own failure must not break the user's notebook, cell after cell
        _session["runner"] = None
        _show(f"oomladder stopped following this kernel ({type(exc).__name__}: {exc}); what it journaled is in "
              f"{runner.config.run_dir}")
        return
    if _trained(runner):
        _session["made"] = None  # it holds a run now: never removed


def _trained(runner: KernelRunner) -> bool:
    return any(r["type"] in (schema.PROGRESS, schema.IN_PLACE) and r.get("step") is not None
               for r in runner.journal.records)


def _show(what: Any) -> None:
    from rich.console import Console
    # rich looks for IPython's `get_ipython` builtin, which exists only while a cell runs, not in post_run_cell.
    shell = _session["ipython"]
    kind = f"{type(shell).__module__}.{type(shell).__name__}" if shell is not None else ""
    notebook = kind.endswith("ZMQInteractiveShell") or "google.colab" in kind
    Console(force_jupyter=notebook or None).print(what)
