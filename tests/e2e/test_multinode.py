"""Two nodes on one machine: two supervisors sharing one run directory, each starting its node's half
of a torchrun world (static rendezvous on localhost, gloo, one rank per node). A real mid-run OOM under
the cap on both ranks, the same decision on both nodes from their journals, the world effective batch
kept, and no process left. On the default path (`env`): in-place recovery declines several ranks, and each node
journals its own rank's `declined` record; the nodes must still agree."""

import socket
import subprocess
import sys

import pytest

from oomladder.record.history import fold
from oomladder.record.journal import read_journal
from tests.conftest import oomladder_argv, processes_of
from tests.e2e.ledger import assert_each_step_ran_once
from tests.e2e.test_recovery import TRAIN_TINY

pytestmark = pytest.mark.e2e


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_supervisors_as_two_nodes_recover_on_a_shared_plan(tmp_path, env):
    (tmp_path / "halve.yaml").write_text("rungs: [halve_batch]\n")
    run_dir = tmp_path / "shared"
    port = _free_port()

    def node(rank):
        argv = oomladder_argv(
            "run", "--nnodes", "2", "--node-rank", str(rank), "--node-timeout", "5m", "--memory-cap", "1200MiB",
            "--ladder", "halve.yaml", "--run-dir", str(run_dir), "--",
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
            "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port), str(TRAIN_TINY),
            "--model-dir", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"), "--batch-size", "8",
            "--max-steps", "4", "--long-len", "384", "--count-steps", str(tmp_path / "steps"))
        log = open(tmp_path / f"supervisor{rank}.log", "w")  # noqa: SIM115 (closed with the process below)
        return subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT), log

    supervisors = [node(0), node(1)]
    codes = []
    for process, log in supervisors:
        try:
            codes.append(process.wait(timeout=900))
        finally:
            log.close()
    logs = "\n".join((tmp_path / f"supervisor{rank}.log").read_text() for rank in (0, 1))
    assert codes == [0, 0], logs
    assert_each_step_ran_once(tmp_path / "steps", 4)  # the program's own record, from global rank 0

    views = [fold(read_journal(run_dir / "journal.jsonl")), fold(read_journal(run_dir / "journal.node1.jsonl"))]
    for view in views:
        first, last = view.attempts[0], view.attempts[-1]
        assert view.program_plan.world_size == 2
        assert first.failure.is_memory and first.failure.rank in (0, 1) and first.failure.step == 2
        assert (last.plan.per_device_train_batch_size, last.plan.gradient_accumulation_steps) == (4, 2)
        assert {a.plan.effective_batch for a in view.attempts} == {16}  # 8 x 1 x 2 nodes, then 4 x 2 x 2
        assert last.status == "finished" and last.resumed_from == 2 and last.steps_run == (3, 4)
    # One decision and one root cause, taken by each node from the journals.
    assert [(d.rung, d.plan) for d in views[0].decisions] == [(d.rung, d.plan) for d in views[1].decisions]
    assert views[0].attempts[0].failure == views[1].attempts[0].failure
    last = views[0].attempts[-1].number
    for node in (0, 1):  # each node's rank ran the new plan, and wrote into its node's own folder
        assert (run_dir / "attempts" / f"{last:03d}" / f"node{node}" / f"progress.{node}.jsonl").exists()
    assert (run_dir / "report.md").exists() and not list(run_dir.glob("report.node*"))
    assert processes_of(run_dir) == []
