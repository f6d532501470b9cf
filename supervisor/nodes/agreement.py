"""Several nodes: one supervisor per node, one shared run directory, one decision.

This module holds the pure functions of the nodes' journals. The runner's side (waiting, telling
this node's end) is world.py, which node this is topology.py, and reading the peers' journals peers.py.

Each node's supervisor writes its own append-only journal (`journal.jsonl` for node 0,
`journal.node1.jsonl`, ...): one writer per file, so nothing depends on appends from two hosts
being atomic on a shared filesystem. Its workers write into the node's own attempt folder
(`attempts/NNN/node1/`), so a supervisor polls only its own ranks' files, its logs collide with no
other node's, and a launcher's stray file stays on its node. The journals are the supervisors' only
channel to each other:

- When its local group ends, a node journals `node_ended`: its own evidence (the earliest failure
  of its ranks, when it happened, the checkpoint global rank 0 saved if it ran there) and waits
  until every node has done the same. A node that sees a peer's failure first stops its own group at once, instead of
  waiting for a collective to time out.
- `world_end` folds the nodes' evidence into the world's end, a pure function: the root cause is
  the first failure in time over all ranks, as in PyTorch's elastic error files, so a rank that
  died because a peer died is not taken for the cause. Every node journals the same end, and
  so takes the same decision from the same plan, facts and rung uses.
- Before launching, each node checks that every node journaled the same plan and checkpoint for
  the attempt, and was started with the same ladder and cap (`disagreement`, `options_differ`): a
  node started with other options stops the run with one line before any rank runs on a mixed plan.

Node 0's journal therefore holds the world's run (every end, decision and checkpoint), and the
report reads it as it reads a single node's; `resume` continues each node from its own. Clocks
are compared across nodes only to order failures; NTP keeps them within milliseconds, and a peer
dies of a failure well after its cause was recorded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oomladder.errors import RunDirError
from oomladder.record import schema
from oomladder.status import AttemptOutcome


def check_node_count(journals: list[list[dict[str, Any]]], nnodes: int, run_dir: Path) -> None:
    """A run directory holds a run on one number of nodes: another number is bad input (RunDirError)."""
    for records in journals:
        run = next((r for r in reversed(records) if r.get("type") == schema.RUN_STARTED), None)
        if run is not None and run.get("nnodes", 1) != nnodes:
            flags = f"--nnodes {run['nnodes']} with each node's --node-rank" if run.get("nnodes", 1) > 1 \
                else "no --nnodes"
            raise RunDirError(f"run directory '{run_dir}' holds a run on {run.get('nnodes', 1)} node(s), not "
                              f"{nnodes}: give {flags}, or a new --run-dir")


def world_end(ends: Mapping[int, dict[str, Any]]) -> dict[str, Any]:
    """The world's end of an attempt from every node's `node_ended` record.

    The root cause is the earliest failure (ties: the lower node); a world finishes only when every
    node finished. The highest peak of any node is the world's.
    """
    failed = [e for e in ends.values() if e.get("failure")]
    peaks = [e for e in ends.values() if e.get("peak") is not None]
    root = min(failed, key=lambda e: (e.get("failed_at") or float("inf"), e["node"])) if failed else None
    top = max(peaks, key=lambda e: e["peak"]) if peaks else None
    base = root or max(ends.values(), key=lambda e: (e.get("step") or 0, -e["node"]))
    return {
        "outcome": root["outcome"] if root else AttemptOutcome.FINISHED,
        "failure": root["failure"] if root else None,
        "exit_code": base.get("exit_code"),
        "node": root["node"] if root else None,
        "stopped": root.get("stopped") if root else None,
        "step": base.get("step"),
        "max_steps": base.get("max_steps") or next((e["max_steps"] for e in ends.values() if e.get("max_steps")), None),
        "peak": top["peak"] if top else None,
        "peak_measure": top.get("peak_measure") if top else None,
        "checkpoints": [dict(e["checkpoint"], node=e["node"]) for e in sorted(ends.values(), key=lambda e: e["node"])
                        if e.get("checkpoint")],
    }


def disagreement(starts: Mapping[int, dict[str, Any]]) -> str | None:
    """What the nodes' `attempt_started` records disagree on (plan or checkpoint), or None.

    Commands are not compared: with a static rendezvous each node's command names its own
    `--node_rank`.
    """
    first = starts[min(starts)]
    for node in sorted(starts):
        record = starts[node]
        if _set(record.get("plan")) != _set(first.get("plan")):
            return (f"node {node} would run the plan {_set(record.get('plan'))}, node {min(starts)} "
                    f"{_set(first.get('plan'))}")
        if _resume(record) != _resume(first):
            return (f"node {node} would resume from {_resume(record) or 'the start'}, node {min(starts)} from "
                    f"{_resume(first) or 'the start'}")
    return None


def options_differ(runs: Mapping[int, dict[str, Any]]) -> str | None:
    """Which option the nodes' latest `run_started` records disagree on: the ladder or the memory cap
    would make the same failure mean another plan on another node."""
    first = min(runs)
    for node in sorted(runs):
        for option, flag in (("ladder", "--ladder"), ("memory_cap", "--memory-cap")):
            if runs[node].get(option) != runs[first].get(option):
                return f"node {node} was started with another {flag} than node {first}"
    return None


def _set(plan: dict[str, Any] | None) -> str:
    return json.dumps({k: v for k, v in (plan or {}).items() if v is not None}, sort_keys=True)


def _resume(record: dict[str, Any]) -> str | None:
    return (record.get("resume_from") or {}).get("path")


def next_attempt(own: list[dict[str, Any]], peers: Mapping[int, list[dict[str, Any]]]) -> int:
    """The number of the next attempt: after the last any node started itself or saw end anywhere.

    A peer already waiting to start attempt N has not ended it, so a node that restarts joins N
    rather than skipping ahead of it.
    """
    numbers = [r["attempt"] for r in own if r.get("type") == schema.ATTEMPT_STARTED]
    numbers += [r["attempt"] for records in peers.values() for r in records
                if r.get("type") in (schema.ATTEMPT_ENDED, schema.NODE_ENDED)]
    return max(numbers, default=0) + 1


def missing(own: list[dict[str, Any]], peers: Mapping[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Decisions and checkpoints some peer journaled and this node did not (its supervisor died between
    the two): adopted on restart, so rung uses and the checkpoint to resume from agree again."""
    decided = {r["attempt"] for r in own if r.get("type") == schema.DECISION}
    saved = {r["path"] for r in own if r.get("type") == schema.CHECKPOINT}
    adopted = []
    for node in sorted(peers):
        for r in peers[node]:
            if r.get("type") == schema.DECISION and r["attempt"] not in decided:
                decided.add(r["attempt"])
            elif r.get("type") == schema.CHECKPOINT and r["path"] not in saved:
                saved.add(r["path"])
            else:
                continue
            adopted.append({**{k: v for k, v in r.items() if k not in ("v", "ts")}, "adopted_from": node})
    return sorted(adopted, key=lambda r: (r["attempt"], r["type"] != schema.CHECKPOINT))


def of_attempt(records: list[dict[str, Any]], type_: str, number: int) -> dict[str, Any] | None:
    return next((r for r in reversed(records) if r.get("type") == type_ and r.get("attempt") == number), None)


def ended_since(records: list[dict[str, Any]], since: float) -> dict[str, Any] | None:
    """The peer's `run_ended` of an invocation that ended after `since` (this node's own start)."""
    return next((r for r in reversed(records) if r.get("type") == schema.RUN_ENDED and r.get("ts", 0) >= since), None)
