"""oomladder installs as one import package, `oomladder`, beside supervisord (whose import name is
`supervisor`), and its worker adapter reaches programs run by another interpreter.

A real (not editable) install into a fresh virtual environment. oomladder's heavy dependencies
(torch, transformers) come from the test environment through a .pth file placed after the new
environment's own site-packages, so nothing large is downloaded; supervisord 4.3.0 comes from PyPI.
"""

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "zz-oomladder-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _pip(python: Path, *args: str) -> None:
    result = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", *args], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_oomladder_and_supervisord_install_side_by_side_and_both_work(tmp_path):
    python = _venv(tmp_path / "venv")
    # A copy of the sources: building in the checkout would leave a build/ folder whose stale modules a
    # later build could ship.
    source = shutil.copytree(ROOT, tmp_path / "src", ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", "oomladder-runs", ".gpu-site", "tests"))
    _pip(python, str(source))
    _pip(python, "supervisor==4.3.0")
    bin_dir = python.parent
    dist = next((python.parent.parent / "lib").glob("python*/site-packages/oomladder-*.dist-info"))
    top_level = {line.split("/")[0] for line in (dist / "RECORD").read_text().splitlines()
                 if not line.startswith(("../", dist.name))}
    assert top_level == {"oomladder"}
    # The report's documented schema ships beside the module that writes the report; the package says it is
    # typed (PEP 561); --cpu-cap allocator's source ships, to be built at first use; the license's text and the
    # project's URLs travel with the wheel.
    shipped = {line.split(",")[0] for line in (dist / "RECORD").read_text().splitlines()}
    assert {"oomladder/views/report.schema.json", "oomladder/py.typed", "oomladder/process/oomcap.c"} <= shipped
    assert "Apache License" in (dist / "licenses" / "LICENSE").read_text()
    metadata = (dist / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata and "Project-URL: Source, https://" in metadata

    strategies = subprocess.run([bin_dir / "oomladder", "strategies"], capture_output=True, text=True)
    assert strategies.returncode == 0, strategies.stderr
    assert "halve_batch" in strategies.stdout and "bf16" in strategies.stdout
    version = subprocess.run([python, "-m", "oomladder", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == "oomladder 0.1.0"
    supervisord = subprocess.run([bin_dir / "supervisord", "--version"], capture_output=True, text=True)
    assert supervisord.stdout.strip() == "4.3.0", supervisord.stderr

    # The installed wheel's adapter reaches a worker: its failure record is written inside the worker.
    run_dir = tmp_path / "run"
    run = subprocess.run([bin_dir / "oomladder", "run", "--run-dir", str(run_dir), "--", str(python), "-c",
                          "raise ValueError('bad data in shard 7')"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stdout + run.stderr
    record = json.loads((run_dir / "attempts" / "001" / "failure.0.json").read_text())
    assert record["exc_type"] == "ValueError" and record["message"] == "bad data in shard 7"
    assert (run_dir / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_a_worker_run_by_an_interpreter_without_oomladder_still_gets_the_adapter(tmp_path, env):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = bare / "bin" / "python"
    assert subprocess.run([python, "-c", "import oomladder"], capture_output=True).returncode != 0
    run_dir = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "oomladder", "run", "--run-dir", str(run_dir), "--", str(python),
                          "-c", "raise ValueError('bad data in shard 7')"], capture_output=True, text=True,
                         timeout=120, env={k: v for k, v in env.items() if k != "PYTHONPATH"}, cwd=tmp_path)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "adapter could not load" not in (run_dir / "attempts" / "001" / "stderr.log").read_text()
    record = json.loads((run_dir / "attempts" / "001" / "failure.0.json").read_text())
    assert record["exc_type"] == "ValueError"
    shutil.rmtree(bare)
