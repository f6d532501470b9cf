"""Split ahead against the ways without it, side by side in one invocation, every way under the same emulated
device (the same `--memory-cap`, with oomladder's allocator settings): `python -m benchmarks.split_ahead`
(about 10 minutes on 2 quiet cores; `spike`, `trl` or `tail` to run one scenario).

Scenarios:
1. the spike: a Trainer + LoRA fine-tune at batch 16 whose sequences grow 4x (64 to 256 tokens) at step 2, 1200MiB;
2. TRL's step-1 OOM: SFTTrainer in fp32 at batch 16, a quarter of its samples 8x longer, 500MiB;
3. a long-document tail: batch 16, every 4th step 4x longer (64 and 256 tokens), 1200MiB, 8 steps.

Ways, each timed from the command's start to its end:
- split ahead (the default: each step sized before it runs, in-place recovery as the safety net);
- reactive in place (`--no-split-ahead`: a step runs whole until it runs out, then splits, and the run keeps it);
- the best static plan, set in advance: the smallest micro-batch any step needed (split ahead's own journal says;
  at least the halved plan) everywhere, with the same effective batch, run directly under
  the same cap (benchmarks/capped.py);
- Hugging Face's `auto_find_batch_size`, directly under the same cap (the Trainer scripts only).

Targets (docs/benchmarks.md): no OOM after step 1 with split ahead; the spike within 1.05x the static plan; TRL's
step 1 within 1.1x; the long tail at most 1.0x, its short steps run whole. The prediction error is each split-ahead
step's predicted peak against its measured one, from the journal.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.in_place import TRL_SFT, steps_ran
from benchmarks.run import ROOT, TRAIN, timed
from oomladder.record.history import fold
from oomladder.record.journal import read_journal

SCENARIOS = {
    # name: (program, its arguments, cap, steps, HF's auto_find_batch_size applies)
    "spike": (TRAIN, ["--batch-size", "16", "--max-steps", "6", "--short-len", "64", "--long-len", "256",
                      "--grow-at-step", "2"], "1200MiB", 6, True),
    "trl step-1 OOM": (TRL_SFT, ["--batch-size", "16", "--max-steps", "4"], "500MiB", 4, False),
    "long tail": (TRAIN, ["--batch-size", "16", "--max-steps", "8", "--short-len", "64", "--long-len", "256",
                          "--long-every", "4"], "1200MiB", 8, True),
}


def _with(args: list[str], replace: list[str]) -> list[str]:
    """`args` with the flags in `replace` (flag, value pairs) set to their values."""
    out = list(args)
    for flag, value in zip(replace[::2], replace[1::2]):
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def predictions(run_dir: Path) -> tuple[list[float], list[int], int, int]:
    """(each split-ahead step's prediction error, as predicted / measured - 1; the chunks each step ran in, 1 where
    whole; OOMs after step 1; OOMs met in place)."""
    errors, splits, late, ooms = [], [], 0, 0
    for line in (run_dir / "journal.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("type") == "progress" and record.get("executed"):
            splits.append(record.get("split_ahead") or 1)
            if record.get("measured"):
                errors.append(record["predicted"] / record["measured"] - 1 if record.get("predicted") else
                              float("nan"))
        if record.get("type") == "in_place":
            ooms += 1
            late += (record.get("step") or 0) > 1
    return errors, splits, late, ooms


def scenario(work: Path, name: str) -> list[list]:
    program, args, cap, steps, hf = SCENARIOS[name]
    py, key = sys.executable, name.split()[0]
    model = work / "model"
    common = [str(program), "--model-dir", str(model)]
    timed([py, str(TRAIN), "--model-dir", str(model), "--output-dir", str(work / "warm"), "--max-steps", "1",
           "--batch-size", "1", "--long-len", "8"], work)  # the tiny model, built outside every timing
    rows = []
    for way, extra in (("split ahead", []), ("reactive in place (--no-split-ahead)", ["--no-split-ahead"])):
        run_dir, log = work / f"{key}-{len(rows)}", work / f"{key}-{len(rows)}.steps"
        seconds, result = timed([py, "-m", "oomladder", "run", "--memory-cap", cap, "--run-dir", str(run_dir), *extra,
                                 "--", py, *common, *args, "--output-dir", str(run_dir / "out"), "--count-steps",
                                 str(log)], work)
        view = fold(read_journal(run_dir / "journal.jsonl"))
        errors, splits, late, ooms = predictions(run_dir)
        if not extra:
            most = max([2, *splits])  # the smallest micro-batch any step needed, for the static plan below
        ran, once = steps_ran(log)
        known = [e for e in errors if e == e]
        error = (f"median {statistics.median(known):+.0%}, worst {max(known, key=abs):+.0%}" if known and not extra
                 else "-")
        rows.append([f"{name}: {way}", seconds, len(view.attempts), ooms, late, sum(n > 1 for n in splits), error,
                     ran, once, result.returncode == 0])
    # The best static plan that fits every batch: the smallest micro-batch any step needed, from split ahead's own
    # journal (the halved plan where no step needed more), with the effective batch kept.
    batch = int(args[args.index("--batch-size") + 1])
    static = ["--batch-size", str(batch // most), "--grad-accum", str(most)]
    directs = [(f"static: batch {batch // most} x {most} everywhere, set in advance", _with(args, static))]
    if hf:
        directs.append(("Hugging Face auto_find_batch_size", [*args, "--auto-find-batch-size"]))
    for way, options in directs:
        log = work / f"{key}-direct-{len(rows)}.steps"
        seconds, result = timed([py, "-m", "benchmarks.capped", cap, *common, *options, "--output-dir",
                                 str(work / f"{key}-direct-{len(rows)}"), "--count-steps", str(log)], ROOT)
        if result.returncode != 0:  # a baseline that did not run makes every ratio meaningless: say why
            print(f"{name}: {way} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
        ran, once = steps_ran(log)
        rows.append([f"{name}: {way}", seconds, 1, "-", "-", "-", "-", ran, once, result.returncode == 0])
    static = rows[2][1]
    for row in rows:
        row.insert(2, row[1] / static)
    return rows


def table(rows: list[list]) -> Table:
    out = Table(title="Split ahead, reactive in-place recovery, the static plan and HF's search, under one cap",
                title_justify="left")
    for column in ("way", "wall time", "vs static", "processes", "OOMs", "OOMs after step 1", "steps split ahead",
                   "prediction error", "steps", "each once", "finished"):
        out.add_column(column)
    for way, seconds, ratio, starts, ooms, late, split, error, ran, once, finished in rows:
        out.add_row(way, f"{seconds:.1f} s", f"{ratio:.2f}x", str(starts), str(ooms), str(late), str(split), error,
                    str(ran), "yes" if once else "NO", "yes" if finished else "NO")
    return out


def measure(names: list[str] | None = None) -> list[list]:
    with tempfile.TemporaryDirectory(prefix="oomladder-bench-split-ahead-") as tmp:
        return [row for name in names or SCENARIOS for row in scenario(Path(tmp), name)]


def main() -> int:
    names = [name for name in SCENARIOS if name.split()[0] in sys.argv[1:]]
    Console(width=220).print(table(measure(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
