"""`%load_ext oomladder` in a real IPython shell, in a process of its own (the extension patches the Trainer): the
run begins in the cell that loads it and each later cell is taken in without an error of oomladder's. The training
itself, with a real OOM in a kernel run by Jupyter, is tests/e2e/test_live_notebook.py."""

import json
import subprocess
import sys

SHELL = """
import sys
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
for cell in sys.argv[1:]:
    result = shell.run_cell(cell)
    if not result.success:
        print("cell failed:", repr(result.error_in_exec or result.error_before_exec))
"""


def test_the_extension_begins_a_run_and_takes_in_each_cell_without_an_error(tmp_path, env):
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", SHELL, f"%load_ext oomladder\n%oomladder --run-dir {run_dir}",
                           "x = 1", "x + 1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "Error" not in out and "cell failed" not in out, out
    assert "recover from out-of-memory errors in place" in out
    types = [json.loads(line)["type"] for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert types[0] == "run_started" and "attempt_started" in types
