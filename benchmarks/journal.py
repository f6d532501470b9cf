"""A long night's journal: `python -m benchmarks.journal` (about half a minute).

It builds the journal of a run of 200,000 optimizer steps (the H200 run of tests/fixtures, with its
second attempt's progress records repeated) and measures, each in a fresh process, what a person and
the supervisor do with it: `oomladder report`, a resume opening the journal, and the live table's
update after one more poll. Target (issue 13): the supervisor under 100 MB at 200k records, and a
table that updates without refolding the journal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "journal_v1_h200.jsonl"

# Each measurement runs in a process of its own, so its peak RSS is its own.
MEASURE = r"""
import sys, time
from pathlib import Path
what, run_dir = sys.argv[1], Path(sys.argv[2])
began = time.perf_counter()
if what == "report":
    from oomladder.cli import main
    try:
        main(["report", str(run_dir), "--format", "md"])
    except SystemExit:
        pass
    sys.stdout.flush()
elif what == "open":
    from oomladder.record.journal import Journal
    journal = Journal.in_run_dir(run_dir)
    journal.view()
else:  # one more poll's records, then the table, as the live display draws it
    from rich.console import Console
    from oomladder.record.journal import Journal
    from oomladder.views.table import attempts_table
    journal = Journal.in_run_dir(run_dir)
    console = Console(file=open("/dev/null", "w"), width=160)
    began = time.perf_counter()
    journal.extend("progress", [{"attempt": 2, "rank": 0, "step": 200_003 + i, "max_steps": 400_000,
                                 "phase": "train"} for i in range(10)])
    console.print(attempts_table(journal.view()))
seconds = time.perf_counter() - began
# VmHWM, not ru_maxrss: a forked child's ru_maxrss starts from its parent's, VmHWM from its own exec.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(f"RESULT {seconds:.3f} {hwm * 1024}", file=sys.stderr)
"""


def build(run_dir: Path, steps: int) -> int:
    """The fixture's run with `steps` progress records in its second attempt; returns the journal's bytes."""
    records = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    template = next(r for r in records if r["type"] == "progress" and r["attempt"] == 2)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "journal.jsonl", "w") as f:
        for record in records:
            if record["type"] == "progress" and record["attempt"] == 2:
                continue
            if record["type"] == "attempt_ended" and record["attempt"] == 2:
                for i in range(steps):
                    f.write(json.dumps({**template, "step": 3 + i, "max_steps": steps + 2,
                                        "ts": template["ts"] + i * 0.01}) + "\n")
            f.write(json.dumps(record) + "\n")
    return (run_dir / "journal.jsonl").stat().st_size


def measure(what: str, run_dir: Path) -> tuple[float, int]:
    done = subprocess.run([sys.executable, "-c", MEASURE, what, str(run_dir)], capture_output=True, text=True,
                          check=True)
    seconds, rss = done.stderr.strip().splitlines()[-1].split()[1:]
    return float(seconds), int(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="oomladder-journal-") as tmp:
        run_dir = Path(tmp) / "run"
        size = build(run_dir, args.steps)
        table = Table(title=f"a journal of {args.steps:,} progress records ({size / 2**20:.0f} MiB)")
        for column in ("what", "time", "peak RSS (whole process)", "target"):
            table.add_column(column)
        rows = [("open", "resume opens the journal and folds it", "< 100 MB"),
                ("report", "oomladder report --format md", ""),
                ("poll", "the live table after one more poll (10 records)", "no refold")]
        for what, label, target in rows:
            seconds, rss = measure(what, run_dir)
            table.add_row(label, f"{seconds:.2f} s", f"{rss / 1e6:.0f} MB", target)
        Console().print(table)


if __name__ == "__main__":
    main()
