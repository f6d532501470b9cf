"""End to end: the demo rehearsed under `--cpu-cap address-space`, the CPU emulation that needs no C compiler (the
fallback where the default allocator cap cannot be built). The same real OOM at the same step as under the default
(test_recovery.py's demo), the same recovery, every step once."""

import subprocess

import pytest

from oomladder.classify import Kind
from oomladder.record.history import fold
from oomladder.record.journal import read_journal
from tests.conftest import oomladder_argv, processes_of
from tests.e2e.ledger import assert_each_step_ran_once

pytestmark = pytest.mark.e2e


def test_the_demo_under_the_address_space_cap_meets_the_same_oom_and_finishes(tmp_path, env):
    run_dir = tmp_path / "demo"
    done = subprocess.run(oomladder_argv("demo", "--cpu-cap", "address-space", "--run-dir", str(run_dir)),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    records = read_journal(run_dir / "journal.jsonl")
    view = fold(records)
    assert view.run["cpu_cap"] == "address-space"
    # The worker itself says how its cap was applied.
    modes = {r["memory_cap"]["mode"] for r in records if r["type"] == "observed" and r.get("memory_cap")}
    assert modes == {"cpu_address_space"}
    first, last = view.attempts[0], view.attempts[-1]
    assert first.failure.kind is Kind.CPU_OOM and first.failure.memory == "device" and first.failure.step == 2
    assert "DefaultCPUAllocator: can't allocate memory" in (run_dir / "attempts" / "001" / "stderr.log").read_text()
    assert (last.status, last.step) == ("finished", 4) and {a.plan.effective_batch for a in view.attempts} == {16}
    assert {a.peak_measure for a in view.attempts} == {"address_space_over_baseline"}
    assert all(0 < a.peak < 1200 << 20 for a in view.attempts)
    assert_each_step_ran_once(run_dir / "steps.log", 4)
    assert not [r for r in records if r["type"] == "warning"]
    assert processes_of(run_dir) == []
