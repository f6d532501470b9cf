"""Which checkpoint a relaunch resumes from: the newest whole one, never a half-written one."""

import json
import os
import time
from pathlib import Path

from oomladder.process.checkpoints import Resume, is_whole, latest
from oomladder.record.records import CheckpointRecord
from oomladder.worker.recovery import emergency


def make(path, step, weights=True, state=True):
    path.mkdir(parents=True)
    if weights:
        (path / "adapter_model.safetensors").write_bytes(b"x")
    if state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "train_batch_size": 16}))
    return CheckpointRecord(str(path), step)


def test_a_half_written_checkpoint_is_never_resumed_from(tmp_path):
    whole = make(tmp_path / "emergency-step-2-attempt-001", 2)
    no_state = make(tmp_path / "emergency-step-4-attempt-002", 4, state=False)
    partial = make(tmp_path / "emergency-step-5-attempt-003.partial", 5)
    assert is_whole(whole.path) and not is_whole(no_state.path) and not is_whole(partial.path)
    assert latest([whole, no_state, partial], None, since=0).path == whole.path


def test_the_programs_own_checkpoints_count_when_they_are_newer_and_from_this_run(tmp_path):
    emergency_ckpt = make(tmp_path / "run" / "emergency-step-3-attempt-001", 3)
    out = tmp_path / "out"
    make(out / "checkpoint-5", 5)
    make(out / "checkpoint-8", 8, weights=False)  # cut off by a crash
    assert latest([emergency_ckpt], out, since=0) == Resume(str(out / "checkpoint-5"), 5, "periodic")
    stale = time.time() + 60  # checkpoints older than the run belong to another run
    assert latest([emergency_ckpt], out, since=stale).kind == "emergency"
    assert latest([], tmp_path / "missing", since=0) is None


def test_at_the_same_step_the_emergency_checkpoint_wins(tmp_path):
    ours = make(tmp_path / "emergency-step-5-attempt-001", 5)
    make(tmp_path / "out" / "checkpoint-5", 5)
    assert latest([ours], tmp_path / "out", since=0).kind == "emergency"


def _worker_env(monkeypatch, tmp_path):
    (tmp_path / "run" / "attempts" / "002").mkdir(parents=True)
    monkeypatch.setenv("OOMLADDER_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("OOMLADDER_ATTEMPT_DIR", str(tmp_path / "run" / "attempts" / "002"))


class Trainer:
    _train_batch_size = 8


def test_resuming_writes_the_new_plans_batch_into_the_trainer_state(tmp_path, monkeypatch):
    """transformers issue 43708: the batch in trainer_state.json must not undo the smaller micro-batch."""
    _worker_env(monkeypatch, tmp_path)
    ckpt = make(tmp_path / "run" / "checkpoints" / "emergency-step-2-attempt-001", 2)
    monkeypatch.setenv("OOMLADDER_RESUME_FROM", ckpt.path)
    assert emergency.resume_point() == ckpt.path
    assert emergency.prepare_resume(ckpt.path, Trainer()) == ckpt.path
    state = json.loads((Path(ckpt.path) / "trainer_state.json").read_text())
    assert state == {"global_step": 2, "train_batch_size": 8}
    assert sorted(os.listdir(ckpt.path)) == [
        "adapter_model.safetensors", "trainer_state.json"]  # no temporary file left behind


def test_the_programs_own_checkpoint_is_never_written_to(tmp_path, monkeypatch):
    _worker_env(monkeypatch, tmp_path)
    theirs = make(tmp_path / "out" / "checkpoint-4", 4)
    before = {p.name: p.read_bytes() for p in Path(theirs.path).iterdir()}
    resumed = Path(emergency.prepare_resume(theirs.path, Trainer()))
    assert {p.name: p.read_bytes() for p in Path(theirs.path).iterdir()} == before
    assert resumed.parent == tmp_path / "run" / "attempts" / "002"
    assert json.loads((resumed / "trainer_state.json").read_text())["train_batch_size"] == 8
    assert (resumed / "adapter_model.safetensors").read_bytes() == before["adapter_model.safetensors"]


def test_a_checkpoint_that_is_not_whole_is_reported_and_not_resumed_from(tmp_path, monkeypatch):
    _worker_env(monkeypatch, tmp_path)
    monkeypatch.setenv("OOMLADDER_RESUME_FROM", str(tmp_path / "gone"))
    assert emergency.resume_point() is None
    reported = (tmp_path / "run" / "attempts" / "002" / "progress.0.jsonl").read_text()
    assert "is not whole" in json.loads(reported)["resume_failed"]
