"""The other nodes' journals, read as they grow over the shared filesystem."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oomladder.nodes.agreement import of_attempt
from oomladder.nodes.topology import Topology, journal_path
from oomladder.record import schema

# What a node needs of its peers' journals; their progress lines (most of a journal) are not kept.
_KEPT = frozenset({schema.RUN_STARTED, schema.ATTEMPT_STARTED, schema.NODE_ENDED, schema.ATTEMPT_ENDED,
                   schema.DECISION, schema.CHECKPOINT, schema.RUN_ENDED})


class Peers:
    """The other nodes' journals, read as they grow: whole lines only, each byte once."""

    def __init__(self, run_dir: Path, topology: Topology) -> None:
        self.paths = {n: journal_path(run_dir, n) for n in range(topology.nnodes) if n != topology.node_rank}
        self.records: dict[int, list[dict[str, Any]]] = {n: [] for n in self.paths}
        self._offsets = dict.fromkeys(self.paths, 0)

    def refresh(self) -> dict[int, list[dict[str, Any]]]:
        for node, path in self.paths.items():
            try:
                with open(path, "rb") as f:  # opened anew each time: a shared filesystem shows what was closed
                    f.seek(self._offsets[node])
                    chunk = f.read()
            except OSError:
                continue
            whole = chunk[: chunk.rfind(b"\n") + 1]
            self._offsets[node] += len(whole)
            for line in whole.decode("utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line a crash cut off, as read_journal skips it
                if isinstance(record, dict) and record.get("type") in _KEPT:
                    self.records[node].append(record)
        return self.records

    def wait(self, ready: Callable[[dict[int, list[dict[str, Any]]]], bool], timeout: float,
             clock: Callable[[], float], sleep: Callable[[float], None], interval: float,
             interrupted: Callable[[], bool] = lambda: False) -> bool:
        """Poll until `ready(records)`; False at the timeout or when `interrupted()`."""
        deadline = clock() + timeout
        while not ready(self.refresh()):
            if interrupted() or clock() >= deadline:
                return False
            sleep(interval)
        return True

    def missing_for(self, type_: str, number: int) -> list[int]:
        return [n for n, records in self.records.items() if of_attempt(records, type_, number) is None]
