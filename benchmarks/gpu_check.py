"""The GPU check: the real ladder on real CUDA out-of-memory errors, on a 1B-parameter model.

    python -m benchmarks.gpu_check [--out DIR]      # on a machine with a CUDA GPU, about 6 minutes
    python -m benchmarks.gpu_check --dry-run        # anywhere: the parts that need no GPU (CI runs this)

On a GPU it
1. builds a Llama-style model of 0.95B parameters from a config (nothing is downloaded) and saves it;
2. prints `oomladder plan` for LoRA at batch 16 x 1024 tokens on an emulated 16 GiB card;
3. runs an unmodified Trainer + LoRA script (supervisor/demo/train_tiny.py) under
   `oomladder run --memory-cap 16GiB`, which caps the caching allocator with
   `torch.cuda.set_per_process_memory_fraction`: its sequences grow from 128 to 1024 tokens at
   step 3, the OOM is a real `torch.OutOfMemoryError`, and the ladder's rungs (bitsandbytes 8-bit
   among them) are the real ones; it prints the run's table and report;
4. measures the estimator against `torch.cuda.max_memory_allocated` on several plans, no cap;
5. the load case: the same model loaded in bf16 (1.9 GB) straight onto an emulated 1.5 GiB card
   (examples/trainer_lora.py, `device_map="cuda"`) runs out of memory while it loads, and must
   finish on a load-phase rung (int8);
6. measures what the rungs that act on other terms than activations save: Liger's fused linear
   cross-entropy (where liger-kernel is installed), activation offloading, and 8-bit AdamW on a full
   fine-tune, each against the same plan without it (`--only rungs` runs this part alone);
7. in-place recovery on CUDA: section 2's run (in place, the default) against the same run with
   `--no-in-place` and a direct run of the plan it reached, under the same cap without oomladder
   (`--only in_place` runs sections 2 and 7 alone);
8. split ahead on CUDA: benchmarks/split_ahead.py's three scenarios (the spike, TRL's step-1 OOM, a long-document
   tail) on the tiny model under its caps, now `set_per_process_memory_fraction` caps: split ahead, reactive
   in-place recovery, the static halved plan and HF's auto_find_batch_size side by side, with each step's predicted
   peak against `torch.cuda.max_memory_allocated` (`--only split_ahead` runs this part alone, about 5 minutes).
Everything printed also goes to DIR/gpu_check.txt, with the run's report and journal beside it.
The dry run does steps 1-2 on the meta device and checks that each scenario's command is well formed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.estimator import MODELS, SCENARIOS, Scenario, measure, table
from oomladder.record.history import fold
from oomladder.record.journal import read_journal

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "supervisor" / "demo" / "train_tiny.py"
LOAD_TINY = ROOT / "examples" / "trainer_lora.py"
LOAD_CARD = "1.5GiB"
CARD = "16GiB"
MODEL = MODELS["1b"]
LADDER_RUN = ("--batch-size", "16", "--short-len", "128", "--long-len", "1024", "--max-steps", "6")
# The estimator on the 1B model: sequences of 512, both ends of what trains.
CUDA_SCENARIOS = tuple(Scenario(s.name, tuple("512" if a == "256" else a for a in s.program), s.settings)
                       for s in SCENARIOS) + (
    Scenario("LoRA bf16 + int8", ("--batch-size", "8", "--long-len", "512"),
             ("precision=bf16", "load_dtype=bfloat16", "quantization=int8")),
)


# Section 6: (the scenario it is measured against, the scenario with the rung, what it needs installed).
RUNG_SCENARIOS = (
    ("LoRA bf16", Scenario("LoRA bf16 + fused cross-entropy", ("--batch-size", "8", "--long-len", "512"),
                           ("precision=bf16", "load_dtype=bfloat16", "fused_cross_entropy=true")), "liger_kernel"),
    ("LoRA bf16", Scenario("LoRA bf16 + activation offloading", ("--batch-size", "8", "--long-len", "512"),
                           ("precision=bf16", "load_dtype=bfloat16", "activation_offloading=true")), None),
    ("full bf16 autocast", Scenario("full bf16 + 8-bit AdamW", ("--full", "--batch-size", "4", "--long-len", "512"),
                                    ("precision=bf16", "optim=paged_adamw_8bit")), None),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="where the output, report and journal go (default: a temp dir)")
    parser.add_argument("--dry-run", action="store_true", help="only what runs without a GPU")
    parser.add_argument("--only", choices=("rungs", "in_place", "split_ahead"),
                        help="rungs: only the measurements of section 6; in_place: sections 2 and 7; split_ahead: "
                             "section 8")
    args = parser.parse_args(argv)
    console = Console(width=160, record=True)
    out = Path(args.out or tempfile.mkdtemp(prefix="oomladder-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    import torch
    if not args.dry_run and not torch.cuda.is_available():
        console.print("no CUDA GPU here: run with --dry-run for the parts that need none")
        return 2
    work = Path(tempfile.mkdtemp(prefix="oomladder-gpu-work-"))
    try:
        return _check(console, work, out, args.dry_run, args.only)
    finally:
        (out / "gpu_check.txt").write_text(console.export_text())
        shutil.rmtree(work, ignore_errors=True)


def _check(console: Console, work: Path, out: Path, dry_run: bool, only: str | None = None) -> int:
    py = sys.executable
    model_dir = work / "model-1b"
    started = time.time()
    console.print(_versions(dry_run))
    _build(model_dir, on_meta=dry_run)
    console.rule("1. oomladder plan")
    plan = subprocess.run([py, "-m", "oomladder", "plan", "--model", str(model_dir), "--seq-len", "1024",
                           "--batch-size", "16", "--lora-rank", "8", "--memory", CARD, "--device", "cuda"],
                          capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "160"})
    console.print(plan.stdout + plan.stderr, markup=False, highlight=False)
    if plan.returncode != 0:
        return 1
    if dry_run:
        from oomladder.plan import coerce_field
        scenarios = (*CUDA_SCENARIOS, *(s for _, s, _ in RUNG_SCENARIOS))
        for s in scenarios:
            argv = s.argv(model_dir, work / "out", ())
            assert Path(argv[0]).is_file() and "--max-steps" in argv, argv
            for setting in s.settings:
                coerce_field(*setting.split("=", 1))  # what --set will accept
        assert {base for base, _, _ in RUNG_SCENARIOS} <= {s.name for s in CUDA_SCENARIOS}
        assert LOAD_TINY.is_file()
        from oomladder.plan import Plan
        options = direct_options(Plan(per_device_train_batch_size=8, gradient_accumulation_steps=2, precision="bf16",
                                      gradient_checkpointing=True))  # section 7's direct run: train_tiny takes them
        assert all(f'"{o}"' in TRAIN.read_text() for o in options if o.startswith("--")), options
        console.print(f"dry run: model config, plan and {len(scenarios)} scenarios are well formed")
        return 0
    if only == "split_ahead":
        _split_ahead(console)
        console.print(f"gpu check (section 8 only) done in {time.time() - started:.0f} s")
        return 0
    if only == "rungs":
        _rungs(console, work, {})
        console.print(f"gpu check (section 6 only) done in {time.time() - started:.0f} s")
        return 0

    console.rule(f"2. the ladder on real CUDA OOMs: oomladder run --memory-cap {CARD}")
    run_dir = work / "ladder"
    seconds, result = _ladder_run(py, model_dir, work, run_dir)
    console.print(result.stdout[-6000:], markup=False, highlight=False)
    console.print(f"exit status {result.returncode} after {seconds:.0f} s", markup=False)
    if only == "in_place":
        _in_place(console, py, model_dir, work, seconds, run_dir)
        return 0 if result.returncode == 0 else 1
    report = subprocess.run([py, "-m", "oomladder", "report", str(run_dir), "--format", "md"],
                            capture_output=True, text=True, check=False)
    console.print(report.stdout + report.stderr, markup=False, highlight=False)
    for name in ("journal.jsonl", "report.md"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, out / f"ladder-{name}")
    # Each attempt's own logs hold the real OOM text in full: one archive, checkpoints left out.
    shutil.make_archive(str(out / "ladder-attempts"), "gztar", run_dir, "attempts")
    view = fold(read_journal(run_dir / "journal.jsonl"))
    for a in view.attempts:
        if a.failure is not None:
            tail = (run_dir / "attempts" / f"{a.number:03d}" / "stderr.log").read_text().splitlines()[-3:]
            console.print(f"attempt {a.number} ({a.rung or 'start'}): {a.failure.kind.value}: {' | '.join(tail)[:400]}",
                          markup=False, highlight=False)

    console.rule("3. the estimator against torch.cuda.max_memory_allocated (no cap, 2 steps)")
    rows = []
    for scenario in CUDA_SCENARIOS:
        try:
            guess, measured, what = measure(work, "1b", scenario)
        except RuntimeError as exc:
            console.print(f"{scenario.name}: {exc}", markup=False, highlight=False)
            continue
        rows.append(("1b", scenario.name, guess, measured, what))
    if rows:
        console.print(table(rows, "estimate against measured peak, 0.95B Llama, sequence 512"))
        worst = max(abs(g.peak - m) / m for _, _, g, m, _ in rows)
        console.print(f"largest error: {worst:.0%} (target 15 %)")
    loaded = _load_case(console, py, model_dir, work, out)
    _rungs(console, work, {name: measured for _, name, _, measured, _ in rows})
    _in_place(console, py, model_dir, work, seconds, run_dir)
    _split_ahead(console)
    console.print(f"gpu check done in {time.time() - started:.0f} s")
    return 0 if result.returncode == 0 and loaded == 0 else 1


def _ladder_run(py: str, model_dir: Path, work: Path, run_dir: Path, *extra: str) -> tuple[float, Any]:
    t0 = time.time()
    result = subprocess.run([py, "-m", "oomladder", "run", "--memory-cap", CARD, "--run-dir", str(run_dir), *extra,
                             "--", py, str(TRAIN), "--model-dir", str(model_dir), "--output-dir",
                             str(run_dir.with_name(run_dir.name + "-out")), *LADDER_RUN],
                            capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "160"})
    return time.time() - t0, result


def direct_options(plan: Any) -> list[str]:
    """train_tiny's options for a direct run of the plan an oomladder run reached (its batch, accumulation, bf16
    and checkpointing; a quantization it cannot take is said in the table)."""
    return (["--batch-size", str(plan.per_device_train_batch_size), "--grad-accum",
             str(plan.gradient_accumulation_steps)]
            + (["--bf16"] if plan.precision == "bf16" else [])
            + (["--gradient-checkpointing"] if plan.gradient_checkpointing else []))


def _in_place(console: Console, py: str, model_dir: Path, work: Path, in_place_seconds: float, run_dir: Path) -> None:
    """Section 7: section 2's run (in-place recovery on, the default) against the same run relaunched
    (--no-in-place) and a direct run, under the same cap without oomladder, of the plan section 2 reached."""
    from rich.table import Table
    console.rule("7. in-place recovery on CUDA: against the relaunch and a direct run of the plan it reached")
    ways = [("oomladder, in place (section 2)", in_place_seconds, run_dir)]
    relaunch = work / "relaunch"
    ways.append(("oomladder, relaunch (--no-in-place)", _ladder_run(py, model_dir, work, relaunch, "--no-in-place")[0],
                 relaunch))
    plan = fold(read_journal(run_dir / "journal.jsonl")).final_plan
    t0 = time.time()
    direct = subprocess.run([py, "-m", "benchmarks.capped", CARD, str(TRAIN), "--model-dir", str(model_dir),
                             "--output-dir", str(work / "direct-out"), *LADDER_RUN, *direct_options(plan)],
                            capture_output=True, text=True, check=False)
    base = time.time() - t0
    out = Table(title=f"the spike of section 2 on CUDA ({CARD} cap), three ways", title_justify="left")
    for column in ("way", "wall time", "vs direct", "failed attempts", "process starts", "note"):
        out.add_column(column)
    for name, seconds, folder in ways:
        view = fold(read_journal(folder / "journal.jsonl"))
        note = ("; ".join(f"step {r.step}: {r.outcome} {r.split}" + (" + checkpointing" if r.checkpointing else "")
                          for a in view.attempts for r in a.in_place)
                or " → ".join(a.rung or "start" for a in view.attempts))
        out.add_row(name, f"{seconds:.0f} s", f"{seconds / base:.2f}x",
                    str(sum(1 for a in view.attempts if a.failure is not None)), str(len(view.attempts)), note)
    out.add_row("direct, the plan section 2 reached" + (f" (without its {plan.quantization})" if plan.quantization
                                                        not in (None, "none") else ""),
                f"{base:.0f} s", "1.00x", "0" if direct.returncode == 0 else f"exit {direct.returncode}", "1",
                " ".join(direct_options(plan)))
    console.print(out)


def _split_ahead(console: Console) -> None:
    """Section 8: benchmarks/split_ahead.py on CUDA, its caps as allocator fractions, the prediction error measured
    by max_memory_allocated."""
    from benchmarks import split_ahead
    console.rule("8. split ahead on CUDA (benchmarks/split_ahead.py's scenarios)")
    console.print(split_ahead.table(split_ahead.measure(repeat=1)))  # once: the device's time is short


def _load_case(console: Console, py: str, model_dir: Path, work: Path, out: Path) -> int:
    console.rule(f"5. out of memory while the model loads: bf16 onto an emulated {LOAD_CARD} card")
    run_dir = work / "load"
    t0 = time.time()
    result = subprocess.run([py, "-m", "oomladder", "run", "--memory-cap", LOAD_CARD, "--run-dir", str(run_dir),
                             "--", py, str(LOAD_TINY), "--model-dir", str(model_dir), "--output-dir",
                             str(work / "load-out"), "--load-dtype", "bfloat16", "--device-map", "cuda"],
                            capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "160"})
    console.print(result.stdout[-5000:] + result.stderr[-2000:], markup=False, highlight=False)
    console.print(f"exit status {result.returncode} after {time.time() - t0:.0f} s", markup=False)
    if (run_dir / "journal.jsonl").exists():
        shutil.copy(run_dir / "journal.jsonl", out / "load-journal.jsonl")
        for a in fold(read_journal(run_dir / "journal.jsonl")).attempts:
            log = run_dir / "attempts" / f"{a.number:03d}" / "stderr.log"
            tail = log.read_text().splitlines()[-3:] if log.exists() else []
            what = f"{a.failure.kind.value} in phase {a.failure.phase}" if a.failure else a.status
            console.print(f"attempt {a.number} ({a.rung or 'start'}): {what}: {' | '.join(tail)[:600]}",
                          markup=False, highlight=False)
    return result.returncode


def _rungs(console: Console, work: Path, baselines: dict[str, int]) -> None:
    """Section 6: each rung's measured saving against the same plan without it, and its estimate."""
    import importlib.util

    from rich.table import Table

    from oomladder.units import format_size
    console.rule("6. where the memory goes: the fused cross-entropy, offloading and 8-bit AdamW, measured")
    out = Table(title="peak with and without each rung, 0.95B Llama, sequence 512, 2 steps", title_justify="left")
    for column in ("scenario", "without", "with", "saved", "estimate with", "error"):
        out.add_column(column)
    for base, scenario, needs in RUNG_SCENARIOS:
        if needs and importlib.util.find_spec(needs) is None:
            console.print(f"{scenario.name}: liger-kernel not installed (pip install 'oomladder[liger]')",
                          markup=False, highlight=False)
            continue
        try:
            if base not in baselines:
                baselines[base] = measure(work, "1b", next(s for s in CUDA_SCENARIOS if s.name == base))[1]
            guess, measured, _ = measure(work, "1b", scenario)
        except (RuntimeError, StopIteration) as exc:
            console.print(f"{scenario.name}: {exc}", markup=False, highlight=False)
            continue
        without = baselines[base]
        out.add_row(scenario.name, format_size(without), format_size(measured), format_size(without - measured),
                    format_size(guess.peak), f"{(guess.peak - measured) / measured:+.0%}")
    console.print(out)


def _versions(dry_run: bool) -> str:
    import torch
    import transformers
    parts = [f"python {sys.version.split()[0]}", f"torch {torch.__version__}",
             f"transformers {transformers.__version__}"]
    for name in ("peft", "bitsandbytes", "accelerate"):
        try:
            parts.append(f"{name} {__import__(name).__version__}")
        except Exception as exc:  # a missing package is worth printing, not failing the check on
            parts.append(f"{name} missing ({type(exc).__name__})")
    if not dry_run:
        props = torch.cuda.get_device_properties(0)
        parts.append(f"{props.name}, {props.total_memory / 2**30:.0f} GiB")
    return ", ".join(parts)


def _build(model_dir: Path, on_meta: bool) -> None:
    """The 1B model, saved in fp32 as a fine-tune's checkpoint would be; on the meta device only its config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    args = dict(zip(MODEL[::2], MODEL[1::2]))
    config = LlamaConfig(vocab_size=int(args["--vocab"]), hidden_size=int(args["--hidden"]),
                         intermediate_size=int(args["--intermediate"]), num_hidden_layers=int(args["--layers"]),
                         num_attention_heads=int(args["--heads"]), num_key_value_heads=int(args["--heads"]),
                         max_position_embeddings=4096)
    if on_meta:
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        assert 0.9e9 < sum(p.numel() for p in model.parameters()) < 1.1e9
        config.save_pretrained(model_dir)
        return
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    model.save_pretrained(model_dir)
    del model
    torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
