"""Which node this supervisor is, and where each node's journal and attempt folders lie in the
shared run directory (agreement.py says how the nodes use them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from oomladder.errors import UsageError
from oomladder.record.journal import JOURNAL_NAME


@dataclass(frozen=True)
class Topology:
    nnodes: int = 1
    node_rank: int = 0

    @property
    def multi(self) -> bool:
        return self.nnodes > 1


def journal_path(run_dir: Path, node: int) -> Path:
    return run_dir / (JOURNAL_NAME if node == 0 else f"journal.node{node}.jsonl")


def attempt_dir(run_dir: Path, number: int, topology: Topology) -> Path:
    folder = run_dir / "attempts" / f"{number:03d}"
    return folder / f"node{topology.node_rank}" if topology.multi else folder


def topology(nnodes: int | None, node_rank: int | None, environ: Mapping[str, str]) -> Topology:
    """The node this supervisor is, from the flags, else the launcher's environment; UsageError if unclear.

    torchrun reads its own flags from PET_NNODES/PET_NODE_RANK; under `srun` with one task per node,
    Slurm says how many nodes the step has and which this is. A Slurm job step with several tasks per
    node, or `oomladder run -- srun ...` (one supervisor for the whole job), is not taken for several
    nodes.
    """
    env_nnodes, env_rank = _from_environ(environ)
    if node_rank is not None and nnodes is None and env_nnodes is None:
        raise UsageError("--node-rank needs --nnodes (how many nodes run this training, one oomladder on each)")
    nnodes = nnodes if nnodes is not None else env_nnodes or 1
    node_rank = node_rank if node_rank is not None else env_rank
    if nnodes < 1:
        raise UsageError(f"--nnodes must be 1 or more, not {nnodes}")
    if node_rank is None:
        if nnodes > 1:
            raise UsageError(f"--nnodes {nnodes} needs --node-rank: this node's index, 0 to {nnodes - 1}")
        node_rank = 0
    if not 0 <= node_rank < nnodes:
        raise UsageError(f"--node-rank {node_rank} is out of range for --nnodes {nnodes}: give 0 to {nnodes - 1}")
    return Topology(nnodes, node_rank)


def _from_environ(environ: Mapping[str, str]) -> tuple[int | None, int | None]:
    nnodes, rank = _int(environ.get("PET_NNODES")), _int(environ.get("PET_NODE_RANK"))
    if nnodes is not None:
        return nnodes, rank
    step_nodes = _int(environ.get("SLURM_STEP_NUM_NODES"))
    if step_nodes and step_nodes > 1 and _int(environ.get("SLURM_STEP_NUM_TASKS")) == step_nodes:
        return step_nodes, _int(environ.get("SLURM_NODEID"))
    return None, None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None  # "1:4" (an elastic range) or junk: not a fixed node count to default from
