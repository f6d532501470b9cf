"""In-place recovery against the relaunch, each against a direct run of the plan that fits, in one invocation:
`python -m benchmarks.in_place` (about 3 minutes on 2 quiet cores), or as part of `python -m benchmarks.run`.

1. The spike: a Trainer + LoRA fine-tune at batch 16 whose sequences grow 4x (64 to 256 tokens) at step 2, under
   a 1200MiB cap.
2. A step-1 OOM: TRL's SFTTrainer in fp32 at batch 16, a quarter of its samples 8x longer, under a 500MiB cap.

Each is run under oomladder with in-place recovery (the default), under oomladder with `--no-in-place` (the
relaunch), and directly, under the same cap without oomladder, with the plan the in-place run's split equals
known in advance. Targets (docs/benchmarks.md): the spike at most 1.15x the direct run with no relaunch, the
step-1 OOM at most 1.3x with at most one failed attempt; the effective batch unchanged and every step once.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.run import ROOT, TRAIN, timed
from oomladder.record.history import fold
from oomladder.record.journal import read_journal

TRL_SFT = ROOT / "examples" / "trl_sft.py"
SCENARIOS = {
    # name: (program, its arguments, cap, steps)
    "spike": (TRAIN, ["--batch-size", "16", "--max-steps", "6", "--short-len", "64", "--long-len", "256",
                      "--grow-at-step", "2"], "1200MiB", 6),
    "trl step-1 OOM": (TRL_SFT, ["--batch-size", "16", "--max-steps", "4"], "500MiB", 4),
}


def steps_ran(path: Path) -> tuple[int, bool]:
    """(steps the program ran, each of 1..N once) from its own step log."""
    lines = path.read_text().split("\n") if path.exists() else []
    ran = [int(line.split()[1]) for line in lines if line.strip()]
    return len(ran), ran == sorted(set(ran)) and ran == list(range(1, len(ran) + 1))


def effective(stdout: str) -> str:
    for line in stdout.splitlines():
        if "effective batch" in line:
            return line.rsplit(" ", 1)[-1]
    return "-"


def scenario(work: Path, name: str) -> list[list]:
    program, args, cap, steps = SCENARIOS[name]
    py, key = sys.executable, name.split()[0]
    model = work / "model"
    common = [str(program), "--model-dir", str(model), *args]
    # The tiny model, built once outside every timing.
    timed([py, str(TRAIN), "--model-dir", str(model), "--output-dir", str(work / "warm"), "--max-steps", "1",
           "--batch-size", "1", "--long-len", "8"], work)
    rows, final = [], None
    for way, extra in (("oomladder, in place", []), ("oomladder, relaunch (--no-in-place)", ["--no-in-place"])):
        run_dir = work / f"{key}-{len(rows)}"
        log = work / f"{key}-{len(rows)}.steps"
        seconds, result = timed([py, "-m", "oomladder", "run", "--memory-cap", cap, "--run-dir", str(run_dir), *extra,
                                 "--", py, *common, "--output-dir", str(run_dir / "out"), "--count-steps", str(log)],
                                work)
        view = fold(read_journal(run_dir / "journal.jsonl"))
        last = (run_dir / "attempts" / f"{view.attempts[-1].number:03d}" / "stdout.log").read_text()
        ran, once = steps_ran(log)
        in_place = [r for a in view.attempts for r in a.recovered_in_place]
        failed = sum(1 for a in view.attempts if a.failure is not None)
        note = ", ".join(f"step {r.step}: split {r.split}" for r in in_place) or " → ".join(
            a.rung or "start" for a in view.attempts)
        rows.append([f"{name}: {way}", seconds, failed, len(view.attempts), ran, once, effective(last),
                     result.returncode == 0, note])
        if final is None:
            final = view.final_plan
    options = ["--batch-size", str(final.per_device_train_batch_size), "--grad-accum",
               str(final.gradient_accumulation_steps)]
    log = work / f"{key}-direct.steps"
    seconds, result = timed([py, "-m", "benchmarks.capped", cap, *common, *options, "--output-dir",
                             str(work / f"{key}-direct"), "--count-steps", str(log)], ROOT)
    ran, once = steps_ran(log)
    rows.append([f"{name}: direct, the plan the split equals known in advance", seconds, 0, 1, ran, once,
                 effective(result.stdout), result.returncode == 0, " ".join(options)])
    direct = rows[-1][1]
    for row in rows:
        row.insert(2, row[1] / direct)
    return rows


def table(rows: list[list]) -> Table:
    out = Table(title="In-place recovery against the relaunch, against a direct run of the plan that fits",
                title_justify="left")
    for column in ("way", "wall time", "vs direct", "failed attempts", "process starts", "steps executed",
                   "each once", "effective batch", "finished", "note"):
        out.add_column(column)
    for way, seconds, ratio, failed, starts, ran, once, batch, finished, note in rows:
        out.add_row(way, f"{seconds:.1f} s", f"{ratio:.2f}x", str(failed), str(starts), str(ran),
                    "yes" if once else "NO", batch, "yes" if finished else "NO", note)
    return out


def measure(names: list[str] | None = None) -> list[list]:
    with tempfile.TemporaryDirectory(prefix="oomladder-bench-in-place-") as tmp:
        return [row for name in names or SCENARIOS for row in scenario(Path(tmp), name)]


def main() -> int:
    names = [name for name in SCENARIOS if name.split()[0] in sys.argv[1:]]  # e.g. `spike` or `trl`
    Console(width=200).print(table(measure(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
