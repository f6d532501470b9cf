"""`oomladder demo`: the ladder at work on a tiny model, on the CPU, with a real out-of-memory error.

The bundled script (train_tiny.py) is an ordinary Trainer + LoRA fine-tune at per-device batch
16 whose sequences grow at step 3; under the demo's memory cap the first plan fits at step 1
and runs out of memory when the long sequences arrive.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

DEMO_CAP = "1200MiB"
SCRIPT = Path(__file__).resolve().parent / "train_tiny.py"


def demo_command(run_dir: Path) -> list[str]:
    return [sys.executable, str(SCRIPT), "--model-dir", str(run_dir / "tiny-llama"),
            "--output-dir", str(run_dir / "trainer-output"), "--batch-size", "16", "--max-steps", "4",
            "--count-steps", str(run_dir / "steps.log")]  # the program's own record of each step it ran


def run_demo(run_dir: str | None, memory_cap: str | None, console, in_place: bool = False, verbosity=None,
             cpu_cap: str = "auto") -> int:
    """The ladder at work: a relaunch on a cheaper plan. `in_place`: the same OOM met inside the running
    process instead (worker/recovery/in_place.py), as `oomladder run` does by default."""
    from oomladder.ladder import load_ladder
    from oomladder.run.config import RunConfig
    from oomladder.run.console import run_in_console
    from oomladder.units import parse_size
    from oomladder.views.display import Verbosity

    path = Path(run_dir) if run_dir else Path("oomladder-runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    cap = parse_size(memory_cap or DEMO_CAP, "--memory-cap")
    console.print(f"oomladder demo: a Trainer + LoRA fine-tune of a tiny Llama at batch 16, capped at "
                  f"{memory_cap or DEMO_CAP} of emulated device memory; its sequences grow at step 3.",
                  markup=False, highlight=False)
    config = RunConfig(command=tuple(demo_command(path)), run_dir=path, ladder=load_ladder(None), memory_cap=cap,
                       in_place=in_place, cpu_cap=cpu_cap)
    return run_in_console(config, console, Verbosity.NORMAL if verbosity is None else verbosity)
