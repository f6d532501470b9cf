"""The memory estimator against real peaks: `python -m benchmarks.estimator` prints a table.

Each scenario is a real Trainer run (supervisor/demo/train_tiny.py, two optimizer steps) under
`oomladder run` with the plan given by `--set`, and no cap. The worker reports its peak (the CPU:
resident memory over what it held when the model was about to load; CUDA: max_memory_allocated)
and the model's shape; the estimate is computed from that shape, the plan and the largest batch
that ran, exactly as the supervisor does in its loop.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from oomladder.memory.estimate import Estimate
from oomladder.memory.foresight import estimate_for
from oomladder.process.launch import CPU_DEVICE_ALLOCATOR
from oomladder.record.history import fold
from oomladder.record.journal import read_journal
from oomladder.units import format_size

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "supervisor" / "demo" / "train_tiny.py"


@dataclass(frozen=True)
class Scenario:
    name: str
    program: tuple[str, ...]          # train_tiny.py options
    settings: tuple[str, ...] = ()    # --set values

    def argv(self, model_dir: Path, out: Path, model: tuple[str, ...]) -> list[str]:
        return [str(TRAIN), "--model-dir", str(model_dir), "--output-dir", str(out), "--max-steps", "2",
                "--grow-at-step", "1", *model, *self.program]


# The tiny demo model (20M parameters, its logits dominate) and a deeper one with a small vocabulary
# (activations dominate): both ends of what the estimator must get right.
MODELS = {"demo": ("--vocab", "32000"),
          "deep": ("--vocab", "2000", "--hidden", "512", "--intermediate", "1376", "--layers", "8", "--heads", "8"),
          # benchmarks/gpu_check.py's 0.95B model, for CUDA
          "1b": ("--vocab", "32000", "--hidden", "2048", "--intermediate", "5632", "--layers", "16", "--heads", "16")}

SCENARIOS = (
    Scenario("LoRA fp32", ("--batch-size", "8", "--long-len", "256")),
    Scenario("LoRA bf16", ("--batch-size", "8", "--long-len", "256"), ("precision=bf16", "load_dtype=bfloat16")),
    Scenario("LoRA int8", ("--batch-size", "8", "--long-len", "256"), ("quantization=int8",)),
    Scenario("LoRA checkpointing", ("--batch-size", "8", "--long-len", "256"), ("gradient_checkpointing=true",)),
    Scenario("full fp32", ("--full", "--batch-size", "4", "--long-len", "256")),
    Scenario("full bf16 autocast", ("--full", "--batch-size", "4", "--long-len", "256"), ("precision=bf16",)),
)


def measure(work: Path, model: str, scenario: Scenario, python: str = sys.executable) -> tuple[Estimate, int, str]:
    """(estimate, measured peak, what was measured) for one scenario run under oomladder."""
    run_dir = work / f"{model}-{scenario.name.replace(' ', '-')}"
    settings = [arg for s in scenario.settings for arg in ("--set", s)]
    argv = [python, "-m", "oomladder", "run", "--run-dir", str(run_dir), *settings, "--", python,
            *scenario.argv(work / f"model-{model}", run_dir / "out", MODELS[model])]
    # The allocator a capped worker gets: resident memory then follows the live tensors.
    result = subprocess.run(argv, cwd=work, capture_output=True, text=True, check=False,
                            env={**os.environ, **CPU_DEVICE_ALLOCATOR})
    view = fold(read_journal(run_dir / "journal.jsonl"))
    attempt = view.attempts[-1] if view.attempts else None
    if result.returncode != 0 or attempt is None or attempt.step_peak is None:
        raise RuntimeError(f"{model} / {scenario.name} did not run: {result.stderr[-800:]}")
    guess = estimate_for(view, attempt.plan, attempt.step_batch)
    if guess is None:
        raise RuntimeError(f"{model} / {scenario.name}: the worker reported no model shape")
    return guess, attempt.step_peak, attempt.peak_measure or "?"


def table(rows: list[tuple[str, str, Estimate, int, str]], title: str) -> Table:
    out = Table(title=title, title_justify="left")
    for column in ("model", "scenario", "estimate", "measured", "error", "what was measured", "largest parts"):
        out.add_column(column)
    for model, name, guess, measured, what in rows:
        error = (guess.peak - measured) / measured
        parts = sorted(guess.parts.items(), key=lambda kv: -kv[1])[:3]
        out.add_row(model, name, format_size(guess.peak), format_size(measured), f"{error:+.0%}", what,
                    ", ".join(f"{k} {format_size(v)}" for k, v in parts))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,deep", help="which models (default: demo,deep; 1b is for a GPU)")
    args = parser.parse_args(argv)
    console = Console(width=170)
    rows = []
    with tempfile.TemporaryDirectory(prefix="oomladder-estimator-") as tmp:
        for model in args.models.split(","):
            for scenario in SCENARIOS:
                guess, measured, what = measure(Path(tmp), model, scenario)
                rows.append((model, scenario.name, guess, measured, what))
                console.print(f"{model} / {scenario.name}: estimate {format_size(guess.peak)}, "
                              f"measured {format_size(measured)}")
    console.print(table(rows, "oomladder's memory estimate against the measured peak (2 steps, sequence 256)"))
    worst = max(abs(g.peak - m) / m for _, _, g, m, _ in rows)
    console.print(f"largest error: {worst:.0%} (target: 25 % of resident memory on the CPU, 15 % of "
                  f"max_memory_allocated on CUDA)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
