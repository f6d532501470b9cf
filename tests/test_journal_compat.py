"""Run directories written before a change still report and resume: the journal's schema version 1,
read from a real journal (the GPU check's run on an H200, written by the oomladder of 2026-11-29)."""

import shutil

from oomladder.cli import main
from oomladder.cli.commands import resume_config
from oomladder.record.history import fold
from oomladder.record.journal import read_journal
from oomladder.run.decide import reached_plan
from tests.conftest import ROOT

JOURNAL = ROOT / "tests" / "fixtures" / "journal_v1_h200.jsonl"


def test_a_version_1_journal_still_reports(tmp_path, capsys):
    shutil.copy(JOURNAL, tmp_path / "journal.jsonl")
    assert main(["report", str(tmp_path), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | start | - | OOM in step 3/6 | 1–2 | 14.9 GiB |" in out
    assert "| 2 | bf16 + halve_batch |" in out and "3–6 (resumed)" in out


def test_a_version_1_journal_cut_short_still_resumes_on_the_plan_it_reached(tmp_path):
    lines = JOURNAL.read_text().splitlines(keepends=True)
    decision = next(i for i, line in enumerate(lines) if '"type": "decision"' in line)
    (tmp_path / "journal.jsonl").write_text("".join(lines[: decision + 1]))
    config = resume_config(tmp_path)
    assert config.memory_cap == 16 * 2**30 and config.command[1].endswith("train_tiny.py")
    plan = reached_plan(fold(read_journal(tmp_path / "journal.jsonl")))
    assert (plan.per_device_train_batch_size, plan.gradient_accumulation_steps, plan.precision) == (8, 2, "bf16")
