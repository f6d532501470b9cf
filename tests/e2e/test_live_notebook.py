"""`%load_ext oomladder` in a live kernel, with no supervisor: the notebook run cell by cell as a person runs it
(through nbclient, errors and all). Its first training has a Trainer with its own compute_loss, so its OOM in step 3
cannot be split: the cell shows the next plan and the lines to change. The person runs the TrainingArguments and
Trainer cells again (now with the library's loss); the plan reaches them, the Trainer resumes after step 2, and the
longer step 4 runs in chunks (split ahead, before it can run out). The journal and the report are a supervised run's."""

import os
import re
import subprocess
import sys

import psutil
import pytest

from tests.e2e.ledger import assert_each_step_ran_once, steps_by_process
from tests.e2e.programs import notebook_tiny
from tests.e2e.test_recovery import view_of

pytestmark = pytest.mark.e2e


def cell_text(cell):
    """What a cell showed, as plain text (rich's tables come as display data with a text/plain form)."""
    parts = [o.get("text", "") if o["output_type"] == "stream" else o.get("data", {}).get("text/plain", "")
             for o in cell.get("outputs", [])]
    return "".join("".join(p) for p in parts)


def test_a_live_kernel_recovers_in_place_and_shows_the_next_plan_when_a_step_cannot_be_split(tmp_path, hub):
    import nbformat
    run_dir, steps = tmp_path / "run", tmp_path / "steps"
    (tmp_path / "halve.yaml").write_text("rungs: [halve_batch]\n")  # bf16 on a CPU is minutes per step
    notebook_tiny.write(tmp_path / "live.ipynb", live=f"%load_ext oomladder\n%oomladder --run-dir {run_dir} "
                        f"--memory-cap 1200MiB --ladder {tmp_path / 'halve.yaml'}", model_dir=f"{hub}/model",
                        data_dir=f"{hub}/growing", output_dir=str(tmp_path / "out"), steps_log=str(steps))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OOMLADDER_")}  # no supervisor anywhere
    done = subprocess.run([f"{sys.prefix}/bin/jupyter-execute", "--allow-errors", "--output=executed", "live.ipynb"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    # The notebook's own record: every step once, all in the one kernel.
    kernel = int(steps.read_text().split()[0])
    assert steps_by_process(steps) == [[1, 2, 3, 4]]
    assert_each_step_ran_once(steps, 4)
    view = view_of(run_dir)
    first, last = view.attempts
    assert first.failure.is_memory and first.failure.step == 2 and first.steps == [1, 2]
    assert [r.outcome for r in first.in_place] == ["declined"] and "compute_loss" in first.in_place[0].reason
    assert view.decisions[0].rung == "halve_batch"
    assert last.resumed_from == 2 and last.steps == [3, 4] and last.launched.per_device_train_batch_size == 8
    # The library's loss can be split: its long steps run in chunks, split ahead (or split after an OOM).
    assert last.ahead.steps_split or "split" in [r.outcome for r in last.in_place]
    assert last.plan.effective_batch == 16
    assert view.status == "finished" and view.run["command"] == ["%load_ext", "oomladder"]
    # What the failing cell showed: the next plan, setting by setting, and the lines that hold it.
    cells = nbformat.read(str(tmp_path / "executed.ipynb"), as_version=4).cells
    shown = cell_text(cells[5])
    assert re.search(r"per_device_train_batch_size\s*│\s*16\s*│\s*8", shown)
    assert re.search(r"gradient_accumulation_steps\s*│\s*1\s*│\s*2", shown)
    flat = " ".join(shown.split())
    assert "TrainingArguments(..., per_device_train_batch_size=8, gradient_accumulation_steps=2)" in flat
    assert "resumes after step 2" in flat
    assert "effective batch 16" in cell_text(cells[-1])
    report = (run_dir / "report.md").read_text()
    assert "- command: `%load_ext oomladder`" in report and "trained in" not in report
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE
