"""`oomladder plan` against the peaks of real clients, run as their users run them: `python -m benchmarks.clients
[--run-clm PATH]` prints a table (about 7 minutes on 2 cores, most of it the bf16 steps).

- TRL's `trl sft` command (its trl/scripts/sft.py) with LoRA (`--use_peft`, TRL's default rank 16, on q_proj and
  v_proj), batch 8 of 256 tokens, in fp32 and in bf16.
- Transformers' examples/pytorch/language-modeling/run_clm.py, when `--run-clm` names a copy (Transformers' examples
  are not in its wheel; the script also imports `evaluate`): a full fine-tune on blocks of 256 tokens, batch 4, in
  fp32 and with the weights loaded and trained in bf16 (`--dtype bfloat16 --bf16`).

Each runs two optimizer steps under `oomladder run` with no cap, on the tiny Llama of tests/e2e/programs/hub_tiny.py
(nothing is downloaded), and the worker measures its peak as benchmarks/estimator.py's rows do. The estimate is
`oomladder plan --device cpu --format json`'s starting row for the same model, batch, sequence length, adapters and
the precision the worker reported (`--trainer trl-sft` for TRL). Target: within 15 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.run import ROOT
from oomladder.process.launch import CPU_DEVICE_ALLOCATOR
from oomladder.record.history import fold
from oomladder.record.journal import read_journal
from oomladder.units import format_size

SEQ, ROWS = 256, 64
BIN = Path(sys.executable).parent


def data(folder: Path) -> Path:
    """The tiny Llama with its tokenizer, and rows of more than SEQ words, so that every batch is SEQ tokens wide (TRL
    truncates to --max_length; run_clm.py cuts the text into blocks): `wide/train.jsonl` as a dataset folder for
    TRL, `train.json` as the file run_clm.py takes."""
    sys.path.insert(0, str(ROOT))
    from tests.e2e.programs import hub_tiny
    hub_tiny.build(str(folder))
    rows = "".join(json.dumps({"text": " ".join(f"w{3 + (i * 7 + j) % 31000}" for j in range(SEQ + 16))}) + "\n"
                   for i in range(ROWS))
    (folder / "wide").mkdir(exist_ok=True)
    (folder / "wide" / "train.jsonl").write_text(rows)
    (folder / "train.json").write_text(rows)
    return folder


def clients(hub: Path, out: Path, run_clm: Path | None) -> list[tuple[str, list[str], dict]]:
    """(name, command, what `plan` is told) for each client run."""
    model, common = str(hub / "model"), ["--max_steps", "2", "--save_strategy", "no", "--report_to", "none",
                                         "--logging_steps", "1", "--dataloader_num_workers", "0", "--use_cpu", "true"]
    trl = [str(BIN / "trl"), "sft", "--model_name_or_path", model, "--dataset_name", str(hub / "wide"),
           "--per_device_train_batch_size", "8", "--max_length", str(SEQ), "--use_peft", "--lora_target_modules",
           "q_proj", "v_proj", *common]
    runs = [(f"TRL sft.py, LoRA {precision}", [*trl, "--output_dir", str(out / f"trl-{precision}"), "--bf16",
                                               "true" if precision == "bf16" else "false"],
             {"batch": 8, "lora_rank": 16, "trainer": "trl-sft"}) for precision in ("fp32", "bf16")]
    if run_clm is not None:
        clm = [sys.executable, str(run_clm), "--model_name_or_path", model, "--train_file", str(hub / "train.json"),
               "--block_size", str(SEQ), "--per_device_train_batch_size", "4", "--do_train", *common]
        runs += [("run_clm.py, full fine-tune fp32", [*clm, "--output_dir", str(out / "clm-fp32")], {"batch": 4}),
                 ("run_clm.py, full fine-tune bf16 weights",
                  [*clm, "--output_dir", str(out / "clm-bf16"), "--dtype", "bfloat16", "--bf16"], {"batch": 4})]
    return runs


def measure(work: Path, name: str, command: list[str], told: dict) -> tuple[int, int, str]:
    """(estimate, measured peak, what was measured) for one client."""
    run_dir = work / name.replace(" ", "-").replace(",", "")
    env = {**os.environ, **CPU_DEVICE_ALLOCATOR, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "oomladder", "run", "--run-dir", str(run_dir), "--", *command],
                            cwd=work, capture_output=True, text=True, env=env)
    view = fold(read_journal(run_dir / "journal.jsonl"))
    attempt = view.attempts[-1] if view.attempts else None
    if result.returncode != 0 or attempt is None or attempt.step_peak is None:
        raise RuntimeError(f"{name} did not run: {result.stdout[-1500:]}{result.stderr[-1500:]}")
    plan = attempt.plan
    settings = [f"precision={plan.precision}", f"load_dtype={plan.load_dtype or 'auto'}"]
    argv = [sys.executable, "-m", "oomladder", "plan", "--model", str(work / "hub" / "model"), "--seq-len", str(SEQ),
            "--batch-size", str(told["batch"]), "--device", "cpu", "--memory-cap", "64GiB", "--format", "json",
            *(["--lora-rank", str(told["lora_rank"])] if "lora_rank" in told else []),
            *(["--trainer", told["trainer"]] if "trainer" in told else []),
            *(arg for s in settings for arg in ("--set", s))]
    shown = subprocess.run(argv, capture_output=True, text=True, check=True)
    estimate = json.loads(shown.stdout)["rows"][0]["peak"]
    return estimate, attempt.step_peak, f"{attempt.peak_measure}; {plan.precision}, loaded {plan.load_dtype}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clients", description=__doc__.split("\n")[0])
    parser.add_argument("--run-clm", type=Path, metavar="PATH",
                        help="a copy of Transformers' examples/pytorch/language-modeling/run_clm.py")
    args = parser.parse_args(argv)
    if args.run_clm is not None and not args.run_clm.is_file():
        parser.error(f"--run-clm {args.run_clm}: no such file; give a copy of Transformers' run_clm.py")
    console = Console(width=170)
    out = Table(title="`oomladder plan` against the peak each client measured (2 steps, sequences of 256)",
                title_justify="left")
    for column in ("client", "plan's estimate", "measured", "error", "what was measured"):
        out.add_column(column)
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="oomladder-clients-") as tmp:
        work = Path(tmp)
        hub = data(work / "hub")
        for name, command, told in clients(hub, work / "out", args.run_clm):
            estimate, measured, what = measure(work, name, command, told)
            error = (estimate - measured) / measured
            worst = max(worst, abs(error))
            console.print(f"{name}: estimate {format_size(estimate)}, measured {format_size(measured)}")
            out.add_row(name, format_size(estimate), format_size(measured), f"{error:+.0%}", what)
    console.print(out)
    console.print(f"largest error: {worst:.0%} (target: 15 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
