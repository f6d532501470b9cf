"""Split ahead against the ways without it, side by side in one invocation, every way under the same emulated
device (the same `--memory-cap`, with oomladder's allocator settings): `python -m benchmarks.split_ahead`
(about 20 minutes on 2 quiet cores; `spike`, `trl` or `tail` to run one scenario, `--repeat 1` for one pass).

Scenarios:
1. the spike: a Trainer + LoRA fine-tune at batch 16 whose sequences grow 4x (64 to 256 tokens) at step 2, 1200MiB;
2. TRL's step-1 OOM: SFTTrainer in fp32 at batch 16, a quarter of its samples 8x longer, 500MiB;
3. a long-document tail: batch 16, every 4th step 4x longer (64 and 256 tokens), 1200MiB, 8 steps.

Ways, each timed from the command's start to its end, and each run `--repeat` times in turn (median and range):
- split ahead (the default: each step sized before it runs, in-place recovery as the safety net);
- reactive in place (`--no-split-ahead`: a step runs whole until it runs out, then splits, and the run keeps it);
- the best static plan, set in advance: the smallest micro-batch any step needed (split ahead's own journal says;
  at least the halved plan) everywhere, with the same effective batch, under `oomladder run --no-split-ahead`: what
  split ahead is compared with, the supervisor's own start and report (about 2 s a run here, whatever its length)
  on both sides;
- the same static plan run directly under the same cap (benchmarks/capped.py), without oomladder;
- Hugging Face's `auto_find_batch_size`, directly under the same cap (the Trainer scripts only).

Targets (docs/benchmarks.md): no OOM after step 1 with split ahead; the spike within 1.05x the static plan; TRL's
step 1 within 1.1x; the long tail at most 1.0x, its short steps run whole. The prediction error is each split-ahead
step's predicted peak against its measured one, from the journal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.in_place import TRL_SFT, steps_ran
from benchmarks.run import ROOT, TRAIN, timed
from oomladder.record.history import fold
from oomladder.record.journal import read_journal

REPEAT = 3  # runs of each way: this machine's run-to-run spread (about 10 %) is larger than the targets' margins
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


@dataclass
class Way:
    """One way of running a scenario, and what each of its repetitions did."""

    name: str
    seconds: list[float] = field(default_factory=list)
    processes: int = 1
    ooms: int | None = None        # OOMs met in place (the ways under oomladder only), the most in any repetition
    late: int | None = None        # of which after step 1
    split: int | None = None       # steps split ahead, the most in any repetition (split ahead only)
    errors: list[float] = field(default_factory=list)  # split ahead's prediction errors, every repetition's
    ran: int = 0                   # steps the program ran (the fewest in any repetition)
    once: bool = True              # each step once, in every repetition
    finished: bool = True          # every repetition exited 0

    def took(self, seconds: float, result: subprocess.CompletedProcess, log: Path) -> None:
        ran, once = steps_ran(log)
        self.ran = min(self.ran, ran) if self.seconds else ran
        self.seconds.append(seconds)
        self.once &= once
        self.finished &= result.returncode == 0
        if result.returncode != 0:  # a baseline that did not run makes every ratio meaningless: say why
            print(f"{self.name} failed:\n{result.stderr[-2000:]}", file=sys.stderr)


def _supervised(work: Path, way: Way, tag: str, cap: str, extra: list[str], program_args: list[str]) -> list[int]:
    """One repetition of `way` under `oomladder run`; the chunks each step ran in."""
    py = sys.executable
    run_dir, log = work / tag, work / f"{tag}.steps"
    seconds, result = timed([py, "-m", "oomladder", "run", "--memory-cap", cap, "--run-dir", str(run_dir), *extra,
                             "--", py, *program_args, "--output-dir", str(run_dir / "out"), "--count-steps",
                             str(log)], work)
    way.took(seconds, result, log)
    errors, splits, late, ooms = predictions(run_dir)
    way.processes = max(way.processes, len(fold(read_journal(run_dir / "journal.jsonl")).attempts))
    way.ooms, way.late = max(ooms, way.ooms or 0), max(late, way.late or 0)
    if not extra:
        way.split = max(sum(n > 1 for n in splits), way.split or 0)
        way.errors += [e for e in errors if e == e]
    return splits


def _direct(work: Path, way: Way, tag: str, cap: str, program_args: list[str]) -> None:
    """One repetition of `way` run directly under the same cap (benchmarks/capped.py)."""
    log = work / f"{tag}.steps"
    seconds, result = timed([sys.executable, "-m", "benchmarks.capped", cap, *program_args, "--output-dir",
                             str(work / tag), "--count-steps", str(log)], ROOT)
    way.took(seconds, result, log)


def scenario(work: Path, name: str, repeat: int = REPEAT) -> list[Way]:
    """Every way of the scenario, repeated `repeat` times in turn (a slow spell of the machine then falls on each
    way alike, and the medians compare)."""
    program, args, cap, steps, hf = SCENARIOS[name]
    py, key = sys.executable, name.split()[0]
    model = work / "model"
    common = [str(program), "--model-dir", str(model)]
    timed([py, str(TRAIN), "--model-dir", str(model), "--output-dir", str(work / "warm"), "--max-steps", "1",
           "--batch-size", "1", "--long-len", "8"], work)  # the tiny model, built outside every timing
    ahead, reactive = Way("split ahead"), Way("reactive in place (--no-split-ahead)")
    batch, most = int(args[args.index("--batch-size") + 1]), 2
    static, direct = Way(""), Way("")
    ways = [ahead, reactive, static, direct]
    hf_way = Way("Hugging Face auto_find_batch_size, direct") if hf else None
    if hf_way is not None:
        ways.append(hf_way)
    for rep in range(repeat):
        splits = _supervised(work, ahead, f"{key}-ahead-{rep}", cap, [], [*common, *args])
        if rep == 0:  # the best static plan: the smallest micro-batch any step needed (at least the halved plan)
            most = max([2, *splits])
            static.name = f"static: batch {batch // most} x {most} everywhere, set in advance"
            direct.name = f"{static.name}, direct"
        plan = _with(args, ["--batch-size", str(batch // most), "--grad-accum", str(most)])
        _supervised(work, reactive, f"{key}-reactive-{rep}", cap, ["--no-split-ahead"], [*common, *args])
        _supervised(work, static, f"{key}-static-{rep}", cap, ["--no-split-ahead"], [*common, *plan])
        _direct(work, direct, f"{key}-direct-{rep}", cap, [*common, *plan])
        if hf_way is not None:
            _direct(work, hf_way, f"{key}-hf-{rep}", cap, [*common, *args, "--auto-find-batch-size"])
    for way in ways:
        way.name = f"{name}: {way.name}"
    return ways


def _cell(count: int | None) -> str:
    return "-" if count is None else str(count)  # None: the column does not apply to this way


def table(ways: list[Way]) -> Table:
    out = Table(title="Split ahead, reactive in-place recovery, the static plan and HF's search, under one cap "
                      "(median of the repetitions; vs static: the static plan under oomladder)", title_justify="left")
    for column in ("way", "wall time", "range", "vs static", "vs static direct", "processes", "OOMs",
                   "OOMs after step 1", "steps split ahead", "prediction error", "steps", "each once", "finished"):
        out.add_column(column)
    by_scenario: dict[str, list[Way]] = {}
    for way in ways:
        by_scenario.setdefault(way.name.split(": ")[0], []).append(way)
    for group in by_scenario.values():
        static, direct = (statistics.median(way.seconds) for way in group[2:4])  # scenario()'s order
        for way in group:
            seconds = statistics.median(way.seconds)
            error = (f"median {statistics.median(way.errors):+.0%}, worst {max(way.errors, key=abs):+.0%}"
                     if way.errors else "-")
            out.add_row(way.name, f"{seconds:.1f} s", f"{min(way.seconds):.1f}-{max(way.seconds):.1f} s",
                        f"{seconds / static:.2f}x", f"{seconds / direct:.2f}x", str(way.processes), _cell(way.ooms),
                        _cell(way.late), _cell(way.split), error, str(way.ran), "yes" if way.once else "NO",
                        "yes" if way.finished else "NO")
    return out


def measure(names: list[str] | None = None, repeat: int = REPEAT) -> list[Way]:
    with tempfile.TemporaryDirectory(prefix="oomladder-bench-split-ahead-") as tmp:
        return [way for name in names or SCENARIOS for way in scenario(Path(tmp), name, repeat)]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.split_ahead", description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="*", help="spike, trl or tail (all three when none is named)")
    parser.add_argument("--repeat", type=int, default=REPEAT, help=f"runs of each way, in turn (default {REPEAT})")
    options = parser.parse_args()
    keys = [name.split()[0] for name in SCENARIOS]
    if unknown := [n for n in options.scenarios if n not in keys]:
        parser.error(f"no scenario {unknown[0]!r}: name {', '.join(keys)}, or none for all three")
    names = [name for name in SCENARIOS if name.split()[0] in options.scenarios]
    Console(width=240).print(table(measure(names, max(1, options.repeat))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
