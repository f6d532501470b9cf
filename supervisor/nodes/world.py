"""The runner's side of several nodes: agree to start an attempt, tell this node's end, wait for the
others', and fold them into the world's end (agreement.py says why it is done this way).

It reads the peers' journals and writes only this node's; it ends nothing itself. What the run does
next stays the runner's: an `Ending` says the run stops before an attempt, and `end` returns a
`WorldEnd`, the world's outcome and failure for the runner's usual decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oomladder.classify import Failure, Kind
from oomladder.nodes import agreement
from oomladder.nodes.peers import Peers
from oomladder.nodes.topology import Topology
from oomladder.record import schema
from oomladder.record.journal import Journal
from oomladder.status import AttemptOutcome, RunStatus


@dataclass(frozen=True)
class Ending:
    """The run stops before attempt `number` starts: `status` and `reason` for run_ended; `exit_code` when
    a peer already chose one (None: the runner's own code for `status`)."""

    status: RunStatus
    reason: str
    exit_code: int | None = None


@dataclass(frozen=True)
class PeerStop:
    """Another node's supervisor stopped its group (a signal, a budget): which node, why, and the run status
    and exit code it chose, which every node ends with. A `node_ended` record's `stopped` holds all but the node."""

    node: int
    why: str
    status: RunStatus
    exit_code: int

    @classmethod
    def of(cls, node: int, stopped: dict[str, Any]) -> PeerStop:
        return cls(node, str(stopped.get("why")), run_status(stopped.get("status")), stopped["exit_code"])


def run_status(text: Any) -> RunStatus:
    """A peer's run status as this node reads it: one it does not know (a newer oomladder's, or none) is a stop."""
    return RunStatus(text) if text in schema.RUN_STATUSES else RunStatus.INTERRUPTED


@dataclass(frozen=True)
class WorldEnd:
    """The world's end of an attempt, the same on every node."""

    outcome: AttemptOutcome
    failure: Failure | None
    ended: dict[str, Any]                  # the fields of this node's attempt_ended record
    peer_stop: PeerStop | None             # another node's stop the world ended on
    adopted: tuple[str, ...] = ()          # the peers' checkpoints this node journaled now


class World:
    def __init__(self, run_dir: Path, topology: Topology, timeout: float, interval: float,
                 clock: Callable[[], float], sleep: Callable[[float], None],
                 interrupted: Callable[[], bool]) -> None:
        self.me, self.nnodes, self.timeout, self.interval = topology.node_rank, topology.nnodes, timeout, interval
        self.clock, self.sleep, self.interrupted = clock, sleep, interrupted
        self.peers = Peers(run_dir, topology)
        self.since = 0.0  # when this invocation started: a peer's run_ended before it is an old one

    def journals(self) -> list[list[dict[str, Any]]]:
        return list(self.peers.refresh().values())

    def next_attempt(self, own: list[dict[str, Any]]) -> int:
        return agreement.next_attempt(own, self.peers.refresh())

    def adopt_missed(self, journal: Journal) -> None:
        """Decisions and checkpoints the peers journaled while this node's supervisor was gone."""
        for adopted in agreement.missing(journal.records, self.peers.refresh()):
            journal.append(adopted.pop("type"), **adopted)

    def orphan_ended(self, journal: Journal, number: int, died: float, checkpoint: dict[str, Any] | None) -> None:
        """This node's end of an attempt its dead supervisor never closed. The peers may still wait for it:
        to them the world blinked, a retry on the same plan, which this node, restarted, joins."""
        if agreement.of_attempt(journal.records, schema.NODE_ENDED, number) is not None:
            return  # it died waiting for the others: its own end, told already, stands
        journal.append(schema.NODE_ENDED, attempt=number, node=self.me, outcome="failed", exit_code=None,
                       failed_at=died, checkpoint=checkpoint, stopped=None,
                       failure=Failure(Kind.TRANSIENT, None, f"node {self.me}'s supervisor died during this "
                                       f"attempt").to_dict())

    # --- an attempt's start ------------------------------------------------------------------------------

    def agree_on_start(self, journal: Journal, number: int) -> Ending | None:
        """Wait until every node has journaled attempt `number` with the same plan, checkpoint, ladder and
        cap. None: go. An Ending: the run stops here, before any rank runs on a plan its peers do not share
        (the attempt is journaled as not started)."""
        def ready(peers: dict[int, list[dict[str, Any]]]) -> bool:
            return all(agreement.of_attempt(records, schema.ATTEMPT_STARTED, number) or agreement.ended_since(records,
                                                                                                              self.since)
                       for records in peers.values())

        ok = self.peers.wait(ready, self.timeout, self.clock, self.sleep, self.interval, self.interrupted)
        ending = self._why_not_start(journal, number, ok)
        if ending is not None:
            journal.append(schema.ATTEMPT_ENDED, attempt=number, outcome="interrupted", exit_code=None, duration=0.0,
                           failure=Failure(Kind.INTERRUPTED, None, f"not started: {ending.reason}").to_dict())
        return ending

    def _why_not_start(self, journal: Journal, number: int, ok: bool) -> Ending | None:
        records = self.peers.records
        starts = {n: agreement.of_attempt(r, schema.ATTEMPT_STARTED, number) for n, r in records.items()}
        if self.interrupted():
            return Ending(RunStatus.INTERRUPTED, "oomladder was stopped before the attempt started. Run the same "
                          "command on every node to continue.")
        for node, peer in sorted(records.items()):
            peer_end = agreement.ended_since(peer, self.since)
            if starts[node] is None and peer_end is not None:
                return Ending(run_status(peer_end.get("status")),
                              f"node {node} ended the run: {peer_end.get('reason', '')}", peer_end.get("exit_code"))
        if not ok:
            lost = ", ".join(str(n) for n, start in sorted(starts.items()) if start is None)
            return Ending(RunStatus.NODE_LOST, f"node {lost} did not start attempt {number} within "
                          f"{self.timeout:g} s. Start oomladder on every node with the same --run-dir and --nnodes "
                          f"{self.nnodes}.")
        runs = {n: run for n, rs in [(self.me, journal.records), *records.items()]
                if (run := next((r for r in reversed(rs) if r["type"] == schema.RUN_STARTED), None)) is not None}
        own = agreement.of_attempt(journal.records, schema.ATTEMPT_STARTED, number)
        started = {n: s for n, s in {self.me: own, **starts}.items() if s is not None}  # every node's, after the above
        differ = agreement.options_differ(runs) or agreement.disagreement(started)
        if differ is not None:
            return Ending(RunStatus.NODES_DISAGREE, f"the nodes disagree on attempt {number}: {differ}. Start "
                          f"every node with the same options (--ladder, --set, --memory-cap) and the same --run-dir.")
        return None

    # --- during an attempt --------------------------------------------------------------------------------

    def peer_failed(self, number: int) -> int | None:
        """A peer whose group ended with a failure in this attempt: this node's ranks cannot go on without it."""
        for node, records in self.peers.refresh().items():
            end = agreement.of_attempt(records, schema.NODE_ENDED, number)
            if end is not None and end.get("failure"):
                return node
        return None

    # --- an attempt's end ---------------------------------------------------------------------------------

    def end(self, journal: Journal, number: int, outcome: AttemptOutcome, failure: Failure | None,
            ended: dict[str, Any], failed_at: float | None, checkpoint: dict[str, Any] | None,
            stopped: dict[str, Any] | None) -> WorldEnd:
        """Journal how this node's group ended, wait for every node's, and fold them into the world's end."""
        own = journal.append(schema.NODE_ENDED, node=self.me, outcome=outcome,
                             failure=failure.to_dict() if failure else None, failed_at=failed_at,
                             checkpoint=checkpoint, stopped=stopped, **ended)

        def ready(peers: dict[int, list[dict[str, Any]]]) -> bool:
            return all(agreement.of_attempt(records, schema.NODE_ENDED, number) for records in peers.values())

        ok = self.peers.wait(ready, self.timeout, self.clock, self.sleep, self.interval, self.interrupted)
        ends = {self.me: own, **{n: e for n, records in self.peers.records.items()
                                 if (e := agreement.of_attempt(records, schema.NODE_ENDED, number)) is not None}}
        world = agreement.world_end(ends)
        adopted = self._adopt(journal, number, world["checkpoints"])
        summary = {k: world[k] for k in ("exit_code", "step", "max_steps", "peak", "peak_measure")
                   if world[k] is not None}
        ended = {**ended, **summary, "node": world["node"]}
        if not ok and self.interrupted():
            return WorldEnd(AttemptOutcome.INTERRUPTED, Failure(Kind.INTERRUPTED, None, "stopped while waiting for "
                            "the other nodes' end of the attempt"), ended, None, adopted)
        if not ok:
            lost = ", ".join(str(n) for n in self.peers.missing_for(schema.NODE_ENDED, number))
            return WorldEnd(AttemptOutcome.FAILED, Failure(Kind.UNKNOWN, None, f"node {lost} recorded no end of "
                            f"attempt {number} within {self.timeout:g} s: its supervisor or host may be gone"),
                            ended, None, adopted)
        peer_stop = (PeerStop.of(world["node"], world["stopped"])
                     if world["stopped"] and world["node"] != self.me else None)
        world_failure = Failure.from_dict(world["failure"]) if world["failure"] else None
        outcome = world["outcome"]  # a peer's record, which no check has read: an outcome it does not know failed
        return WorldEnd(AttemptOutcome(outcome) if outcome in schema.ATTEMPT_OUTCOMES else AttemptOutcome.FAILED,
                        world_failure, ended, peer_stop, adopted)

    def _adopt(self, journal: Journal, number: int, saved: list[dict[str, Any]]) -> tuple[str, ...]:
        """Rank 0's checkpoint, wherever rank 0 ran, is every node's: journal the ones this node has not."""
        adopted = []
        for checkpoint in saved:
            if not any(r["type"] == schema.CHECKPOINT and r.get("path") == checkpoint["path"] for r in journal.records):
                journal.append(schema.CHECKPOINT, attempt=number, kind="emergency", path=checkpoint["path"],
                               step=checkpoint["step"], adopted_from=checkpoint["node"])
                adopted.append(checkpoint["path"])
        return tuple(adopted)
