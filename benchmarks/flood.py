"""A flood of steps: `python -m benchmarks.flood` (a few minutes at the default 10 million steps).

A real supervisor runs a worker that writes its step records as fast as it can (tests/e2e/programs/flood.py: 10
million in order, then a million step numbers that count samples, 16 apart), and the table says what the
supervisor paid: its peak memory (VmHWM of its own process, read while it runs), the time from the worker's last
record to the supervisor's exit (the rest of the flood taken in, the journal closed, the reports written), the
journal it left, and `oomladder report --format md` on it in a fresh process. Target (issue 23): the supervisor
under 500 MB, and the report written in seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.journal import measure

ROOT = Path(__file__).resolve().parent.parent
FLOOD = ROOT / "tests" / "e2e" / "programs" / "flood.py"


def supervise(work: Path, name: str, *options: str) -> dict[str, float]:
    """One run under oomladder: the supervisor's peak memory, its time after the worker's last record, the journal."""
    run_dir, done = work / name, work / f"{name}.done"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    began = time.monotonic()
    supervisor = subprocess.Popen([sys.executable, "-m", "oomladder", "run", "--run-dir", str(run_dir), "--",
                                   sys.executable, str(FLOOD), "--done", str(done), *options], cwd=work, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while supervisor.poll() is None:
        try:
            status = Path(f"/proc/{supervisor.pid}/status").read_text()
            peak = max(peak, next(int(line.split()[1]) * 1024 for line in status.splitlines()
                                  if line.startswith("VmHWM:")))
        except (OSError, StopIteration):
            pass
        time.sleep(0.1)
    ended = time.time()
    if supervisor.returncode != 0:
        raise SystemExit(f"{name}: oomladder exited {supervisor.returncode}")
    journal = run_dir / "journal.jsonl"
    return {"peak": peak, "after": ended - float(done.read_text()), "total": time.monotonic() - began,
            "records": sum(1 for _ in open(journal, "rb")), "bytes": journal.stat().st_size, "run_dir": run_dir}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000_000)
    parser.add_argument("--sparse", type=int, default=1_000_000, help="step records that count samples (16 apart)")
    args = parser.parse_args()
    table = Table(title="a worker flooding its supervisor with step records")
    for column in ("worker", "supervisor peak RSS", "after the last record", "whole run", "journal",
                   "oomladder report --format md", "target"):
        table.add_column(column)
    with tempfile.TemporaryDirectory(prefix="oomladder-flood-") as tmp:
        for name, label, options in (("dense", f"{args.steps:,} steps in order", ("--steps", str(args.steps))),
                                     ("sparse", f"{args.sparse:,} step numbers 16 apart",
                                      ("--steps", str(args.sparse), "--every", "16"))):
            got = supervise(Path(tmp), name, *options)
            seconds, rss = measure("report", got["run_dir"])
            table.add_row(label, f"{got['peak'] / 1e6:.0f} MB", f"{got['after']:.1f} s", f"{got['total']:.1f} s",
                          f"{got['records']:,} records, {got['bytes'] / 2**20:.1f} MiB",
                          f"{seconds:.2f} s, {rss / 1e6:.0f} MB", "< 500 MB; seconds")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
