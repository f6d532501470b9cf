"""A worker that floods its supervisor, on real processes: hundreds of thousands of step records as fast as it
can write them, a progress line of many megabytes, step numbers that count samples. The run finishes, the
journal stays small, the report is written and names each step once. (How much memory and time that costs at
10 million steps: `python -m benchmarks.flood`.)"""

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import processes_of
from tests.e2e.test_recovery import oomladder, view_of

pytestmark = pytest.mark.e2e
FLOOD = Path(__file__).resolve().parent / "programs" / "flood.py"


def flood(tmp_path, env, *options):
    run_dir = tmp_path / "run"
    result = oomladder("run", "--run-dir", str(run_dir), "--", sys.executable, str(FLOOD), *options, cwd=tmp_path,
                       env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert processes_of(run_dir) == []
    return run_dir, json.loads((run_dir / "report.json").read_text())


def test_a_flood_of_step_records_is_journaled_at_a_bounded_rate_and_every_step_is_counted_once(tmp_path, env):
    run_dir, report = flood(tmp_path, env, "--steps", "300000")
    journal = (run_dir / "journal.jsonl").read_text().splitlines()
    assert len(journal) < 3000  # not 300,000: the rest of each look is one record of ranges
    assert report["attempts"][0]["steps_executed"] == [[1, 300_000]]
    assert report["steps"] == {"reported": True, "repeated": [], "missing": [], "exact": True}
    assert any(w["about"] == "flood" for w in report["warnings"])


def test_a_progress_line_of_megabytes_is_skipped_and_said(tmp_path, env):
    run_dir, report = flood(tmp_path, env, "--long-line", str(20 * 2**20), "--steps", "10")
    assert report["attempts"][0]["steps_executed"] == [[1, 10]]
    warning, = [w for w in report["warnings"] if w["about"] == "overlong"]
    assert "longer than 64 KiB" in warning["text"]
    assert max(len(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()) < 70_000


def test_step_numbers_that_count_samples_stay_bounded_and_are_said_to_be_sparse(tmp_path, env):
    run_dir, report = flood(tmp_path, env, "--steps", "100000", "--every", "16")
    assert report["steps"]["exact"] is False and report["steps"]["missing"] == []
    assert "too sparse" in view_of(run_dir).ended.reason
    assert (run_dir / "journal.jsonl").stat().st_size < 20 * 2**20
