"""Several nodes: one supervisor per node, one shared run directory, one decision (agreement.py says
how). topology.py says which node this is, peers.py reads the other nodes' journals, and world.py is
the runner's side."""

from oomladder.nodes.agreement import (
                                       check_node_count,
                                       disagreement,
                                       ended_since,
                                       missing,
                                       next_attempt,
                                       of_attempt,
                                       options_differ,
                                       world_end,
)
from oomladder.nodes.topology import Topology, attempt_dir, journal_path, topology

__all__ = ["Topology", "attempt_dir", "check_node_count", "disagreement", "ended_since", "journal_path", "missing",
           "next_attempt", "of_attempt", "options_differ", "topology", "world_end"]
