"""Which checkpoint the next attempt resumes from: the newest whole one of this run.

Candidates are the emergency checkpoints the adapter saved (in the journal) and the program's
own periodic `checkpoint-N` folders written since the run started. "Whole" means the trainer
state and the weights are there and it is not a `.partial` folder: Transformers'
`get_last_checkpoint` goes by name alone and will pick a folder a crash left half-written.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from oomladder.worker.protocol.files import CHECKPOINT_MARKER

_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "model.safetensors.index.json",
            "pytorch_model.bin", "pytorch_model.bin.index.json")
_PERIODIC = re.compile(r"^checkpoint-(\d+)$")
_EMERGENCY = re.compile(r"^emergency-step-\d+-attempt-[\w.-]+$")  # as worker/recovery/emergency.py names them


class Saved(Protocol):
    """A checkpoint the journal holds (record/records.py's CheckpointRecord), as this layer reads it."""

    @property
    def path(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def kind(self) -> str: ...


@dataclass(frozen=True)
class Resume:
    """The checkpoint the next attempt resumes from: an emergency one of oomladder's or the program's periodic one."""

    path: str
    step: int
    kind: str  # emergency | periodic

    def to_dict(self) -> dict[str, Any]:
        """As the attempt_started record's `resume_from` keeps it."""
        return {"path": self.path, "step": self.step, "kind": self.kind}


def is_whole(path: str | Path) -> bool:
    """A folder to resume from: an emergency checkpoint an adapter marked whole (worker/recovery/emergency.py), or a
    Trainer checkpoint with its state and weights."""
    path = Path(path)
    if not path.is_dir() or path.name.endswith(".partial"):
        return False
    return (path / CHECKPOINT_MARKER).is_file() or ((path / "trainer_state.json").is_file()
                                          and any((path / name).exists() for name in _WEIGHTS))


def periodic(output_dir: str | Path, since: float) -> list[Resume]:
    """The program's own checkpoints written after `since` (older ones may belong to another run)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        m = _PERIODIC.match(child.name)
        if m and is_whole(child) and (child / "trainer_state.json").stat().st_mtime >= since:
            found.append(Resume(str(child), int(m.group(1)), "periodic"))
    return found


def latest(emergency: Iterable[Saved], output_dir: str | Path | None, since: float) -> Resume | None:
    candidates = [Resume(c.path, c.step, "emergency") for c in emergency if is_whole(c.path)]
    if output_dir:
        candidates += periodic(output_dir, since)
    if not candidates:
        return None
    # The furthest step wins; at a tie, the emergency one, which holds the RNG of the step's end.
    return max(candidates, key=lambda c: (c.step, c.kind == "emergency"))


def remove_superseded(run_dir: str | Path, checkpoints: Iterable[Saved], keep: str | None) -> None:
    """Emergency checkpoints are oomladder's: each is superseded by the next one, and all by a finished run.
    Only what oomladder itself made is deleted: a folder named as it names them, directly inside
    RUN_DIR/checkpoints, never through a link, whatever a journal record says."""
    for record in checkpoints:
        if record.path != keep and record.kind == "emergency" and ours(run_dir, record.path):
            shutil.rmtree(record.path, ignore_errors=True)


def ours(run_dir: str | Path, path: str | Path) -> bool:
    folder = Path(path)
    inside = Path(run_dir).resolve() / "checkpoints"
    return (folder.parent.resolve() == inside and _EMERGENCY.match(folder.name) is not None
            and not folder.is_symlink() and folder.is_dir())


def remove_partial(run_dir: str | Path) -> None:
    """Emergency checkpoints a killed save left half-written (`.partial`): never resumed from, so never kept."""
    for folder in (Path(run_dir) / "checkpoints").glob("*.partial"):
        if _EMERGENCY.match(folder.name[: -len(".partial")]) and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
