"""The GPU check's parts that need no GPU: the 1B model's config builds (on the meta device),
`oomladder plan` sizes it for the emulated 16 GiB card, and each scenario's command is well formed.
The rest runs on a machine with a CUDA GPU: `python -m benchmarks.gpu_check` (docs/development.md, "The GPU check")."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def test_the_gpu_check_dry_run_plans_the_1b_model_without_a_gpu(tmp_path, env):
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0.95B parameters" in result.stdout and "first to fit" in result.stdout
    assert "scenarios are well formed" in result.stdout
    assert "first to fit" in (tmp_path / "gpu_check.txt").read_text()
