"""Several nodes: the pure parts (names, topology, the world's end, agreement), then two supervisors
in one process, each on its own thread with scripted stand-in workers, sharing a run directory.
tests/e2e/test_multinode.py runs two real supervisors with real torchrun ranks and a real OOM."""

import json
import signal
import threading
import time
from pathlib import Path

import pytest

from oomladder import nodes
from oomladder.errors import RunDirError, UsageError
from oomladder.ladder import parse_ladder
from oomladder.nodes import Topology
from oomladder.record.history import fold
from oomladder.record.journal import read_journal
from oomladder.run import RunConfig, Runner, watch
from tests.conftest import FakeClock
from tests.test_runner import CPU_OOM, FACTS, PROGRAM

WORLD = {**PROGRAM, "world_size": 2}
GLOO = "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242"


# --- names and the command line --------------------------------------------------------------------

def test_node_0_keeps_the_single_node_names_and_other_nodes_get_their_own(tmp_path):
    assert nodes.journal_path(tmp_path, 0) == tmp_path / "journal.jsonl"
    assert nodes.journal_path(tmp_path, 3) == tmp_path / "journal.node3.jsonl"
    assert nodes.attempt_dir(tmp_path, 7, Topology()) == tmp_path / "attempts" / "007"
    assert nodes.attempt_dir(tmp_path, 7, Topology(2, 1)) == tmp_path / "attempts" / "007" / "node1"


@pytest.mark.parametrize("nnodes, node_rank, environ, expected", [
    (None, None, {}, Topology(1, 0)),
    (2, 1, {}, Topology(2, 1)),
    (None, None, {"PET_NNODES": "4", "PET_NODE_RANK": "2"}, Topology(4, 2)),
    (None, None, {"PET_NNODES": "1:4"}, Topology(1, 0)),  # an elastic range is no fixed count of supervisors
    # srun with one task per node: one oomladder per node.
    (None, None, {"SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_NODEID": "1"}, Topology(2, 1)),
    # A step with a task per GPU, or a batch script running `oomladder run -- srun ...`: one supervisor.
    (None, None, {"SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "16", "SLURM_NODEID": "1"}, Topology(1, 0)),
    (None, None, {"SLURM_NNODES": "2", "SLURM_NODEID": "0"}, Topology(1, 0)),
    (2, 0, {"SLURM_STEP_NUM_NODES": "4", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NODEID": "3"}, Topology(2, 0)),
])
def test_the_topology_comes_from_the_flags_else_from_the_launcher(nnodes, node_rank, environ, expected):
    assert nodes.topology(nnodes, node_rank, environ) == expected


@pytest.mark.parametrize("nnodes, node_rank, message", [
    (None, 1, "--node-rank needs --nnodes"),
    (2, None, "--nnodes 2 needs --node-rank: this node's index, 0 to 1"),
    (2, 2, "--node-rank 2 is out of range for --nnodes 2: give 0 to 1"),
    (1, 1, "--node-rank 1 is out of range for --nnodes 1"),
])
def test_an_unclear_topology_is_bad_input(nnodes, node_rank, message):
    with pytest.raises(UsageError, match=message):
        nodes.topology(nnodes, node_rank, {})


# --- the world's end, agreement, restart ----------------------------------------------------------------

def _end(node, failure=None, failed_at=None, **more):
    return {"node": node, "outcome": "failed" if failure else "finished", "exit_code": 1 if failure else 0,
            "failure": failure, "failed_at": failed_at, "step": 2, "max_steps": 6, **more}


OOM = {"kind": "cpu_oom", "memory": "device", "summary": "CPU allocator out of memory", "rank": 3, "step": 2}
PEER_DIED = {"kind": "error", "memory": None, "summary": "RuntimeError: Connection closed by peer", "rank": 0}


def test_the_root_cause_is_the_first_failure_in_time_not_the_peer_that_died_of_it():
    world = nodes.world_end({0: _end(0, PEER_DIED, 105.2, peak=900), 1: _end(1, OOM, 104.9, peak=1200,
                                                                              checkpoint=None)})
    assert (world["failure"], world["node"], world["outcome"]) == (OOM, 1, "failed")
    assert world["peak"] == 1200


def test_a_world_finishes_only_when_every_node_finished():
    assert nodes.world_end({0: _end(0), 1: _end(1)})["failure"] is None
    assert nodes.world_end({0: _end(0), 1: _end(1, OOM, 3.0)})["failure"] == OOM


def test_rank_0s_checkpoint_is_the_worlds_wherever_rank_0_ran():
    saved = {"path": "/shared/run/checkpoints/emergency-step-2-attempt-001", "step": 2}
    world = nodes.world_end({0: _end(0, PEER_DIED, 2.0), 1: _end(1, OOM, 1.0, checkpoint=saved)})
    assert world["checkpoints"] == [{**saved, "node": 1}]


def test_the_root_failures_node_exit_status_and_why_it_was_stopped_are_the_worlds():
    stop = {"status": "interrupted", "exit_code": 143, "why": "SIGTERM"}
    world = nodes.world_end({0: _end(0, PEER_DIED, 2.0, step=3), 1: _end(1, OOM, 1.0, exit_code=137, stopped=stop)})
    assert (world["node"], world["exit_code"], world["stopped"], world["step"]) == (1, 137, stop, 2)


def test_a_failure_with_no_time_is_the_root_cause_only_when_no_other_has_one():
    world = nodes.world_end({0: _end(0, PEER_DIED, None), 1: _end(1, OOM, 7.0)})
    assert world["failure"] == OOM
    assert nodes.world_end({0: _end(0, PEER_DIED, None), 1: _end(1, OOM, None)})["failure"] == PEER_DIED


def test_failures_at_the_same_moment_are_the_lower_nodes():
    assert nodes.world_end({1: _end(1, OOM, 5.0), 0: _end(0, PEER_DIED, 5.0)})["node"] == 0


def test_a_world_that_finished_ends_where_its_furthest_node_did_and_names_no_node():
    world = nodes.world_end({0: _end(0, step=5, max_steps=None), 1: _end(1, step=6, max_steps=None, exit_code=7),
                             2: _end(2, step=6, max_steps=8, exit_code=9)})
    assert (world["outcome"], world["node"], world["stopped"]) == ("finished", None, None)
    assert (world["step"], world["exit_code"], world["max_steps"]) == (6, 7, 8)  # ties: the lower node
    assert nodes.world_end({0: _end(0, step=None, exit_code=3), 1: _end(1, step=None, exit_code=4)})["exit_code"] == 3


def test_the_worlds_peak_is_the_highest_any_node_measured_with_how_it_was_measured():
    world = nodes.world_end({0: _end(0, peak=900, peak_measure="rss"), 1: _end(1, peak=1200, peak_measure="cuda"),
                             2: _end(2)})
    assert (world["peak"], world["peak_measure"]) == (1200, "cuda")
    assert (nodes.world_end({0: _end(0)})["peak"], nodes.world_end({0: _end(0)})["peak_measure"]) == (None, None)


def test_every_nodes_checkpoint_is_kept_in_node_order():
    a, b = {"path": "/c/a", "step": 2}, {"path": "/c/b", "step": 2}
    world = nodes.world_end({1: _end(1, checkpoint=b), 0: _end(0, checkpoint=a), 2: _end(2)})
    assert world["checkpoints"] == [{**a, "node": 0}, {**b, "node": 1}]


def test_a_run_directory_of_another_number_of_nodes_says_which_flags_to_give(tmp_path):
    two = [{"type": "run_started", "nnodes": 2}]
    nodes.check_node_count([two], 2, tmp_path)
    with pytest.raises(RunDirError, match=r"holds a run on 2 node\(s\), not 1: give --nnodes 2 with each node's "
                                          r"--node-rank, or a new --run-dir"):
        nodes.check_node_count([[{"type": "run_started", "nnodes": 1}], two], 1, tmp_path)
    with pytest.raises(RunDirError, match=r"holds a run on 1 node\(s\), not 2: give no --nnodes, or"):
        nodes.check_node_count([[{"type": "run_started"}]], 2, tmp_path)
    nodes.check_node_count([[{"type": "run_started", "nnodes": 2}, {"type": "run_started", "nnodes": 3}]], 3, tmp_path)
    nodes.check_node_count([[{"type": "attempt_started", "nnodes": 5}]], 3, tmp_path)  # no run started: nothing held


def test_nodes_started_with_another_ladder_or_memory_cap_are_named():
    runs = {0: {"ladder": {"source": "a"}, "memory_cap": 100}, 1: {"ladder": {"source": "a"}, "memory_cap": 100}}
    assert nodes.options_differ(runs) is None
    assert nodes.options_differ({**runs, 2: {"ladder": {"source": "b"}, "memory_cap": 100}}) == \
        "node 2 was started with another --ladder than node 0"
    assert nodes.options_differ({**runs, 1: {"ladder": {"source": "a"}, "memory_cap": 200}}) == \
        "node 1 was started with another --memory-cap than node 0"


def test_plans_that_differ_only_in_unset_settings_agree():
    start = {"plan": {"per_device_train_batch_size": 8, "precision": None}, "resume_from": None}
    assert nodes.disagreement({0: start, 1: {"plan": {"per_device_train_batch_size": 8}}}) is None
    assert nodes.disagreement({0: start, 1: dict(start, plan={"per_device_train_batch_size": 4})}) == (
        'node 1 would run the plan {"per_device_train_batch_size": 4}, node 0 {"per_device_train_batch_size": 8}')
    assert nodes.disagreement({1: start, 2: dict(start, resume_from={"path": "/c/2"})}) == \
        "node 2 would resume from /c/2, node 1 from the start"


def test_what_this_node_journaled_itself_is_not_adopted_and_a_fresh_run_starts_at_attempt_1():
    decision = {"v": 1, "ts": 5.0, "type": "decision", "attempt": 2, "rung_index": 3}
    saved = {"v": 1, "ts": 4.0, "type": "checkpoint", "attempt": 2, "path": "/c/2", "step": 2}
    assert nodes.missing([saved, decision], {1: [saved, decision]}) == []
    assert nodes.next_attempt([], {}) == 1 and nodes.next_attempt([], {1: []}) == 1


def test_a_finished_world_takes_the_furthest_nodes_total_steps_and_a_node_that_reported_no_step_is_not_furthest():
    world = nodes.world_end({0: _end(0, step=5, max_steps=6), 1: _end(1, step=6, max_steps=8)})
    assert (world["step"], world["max_steps"]) == (6, 8)
    assert nodes.world_end({0: _end(0, step=None), 1: _end(1, step=1)})["step"] == 1


def test_a_peers_decisions_are_found_among_all_its_other_records():
    decision = {"v": 1, "ts": 5.0, "type": "decision", "attempt": 2, "rung_index": 3}
    peer = [{"type": "run_started", "ts": 1.0}, {"type": "attempt_started", "attempt": 2}, decision]
    assert nodes.missing([], {1: peer}) == [{"type": "decision", "attempt": 2, "rung_index": 3, "adopted_from": 1}]


def test_the_same_plan_written_in_another_order_is_the_same_plan():
    start = {"plan": {"per_device_train_batch_size": 8, "precision": "bf16"}, "resume_from": None}
    reordered = {"plan": {"precision": "bf16", "per_device_train_batch_size": 8}, "resume_from": None}
    assert nodes.disagreement({0: start, 1: reordered}) is None


def test_a_peer_s_latest_record_of_an_attempt_is_found_and_a_run_end_only_after_this_node_started():
    records = [{"type": "node_ended", "attempt": 1, "n": 1}, {"type": "node_ended", "attempt": 2, "n": 2},
               {"type": "node_ended", "attempt": 1, "n": 3}, {"type": "run_ended", "ts": 10.0},
               {"type": "run_ended", "ts": 20.0}]
    assert nodes.of_attempt(records, "node_ended", 1)["n"] == 3
    assert nodes.of_attempt(records, "attempt_ended", 1) is None
    assert nodes.ended_since(records, 20.0)["ts"] == 20.0
    assert nodes.ended_since(records[:4], 10.0)["ts"] == 10.0
    assert nodes.ended_since(records[:4], 10.5) is None
    assert nodes.ended_since([{"type": "run_ended"}], 1.0) is None  # a run end without its time: none since


def test_nodes_disagreeing_on_the_plan_or_the_checkpoint_are_told_apart():
    start = {"plan": {"per_device_train_batch_size": 8}, "resume_from": {"path": "/c/2", "step": 2}}
    assert nodes.disagreement({0: start, 1: dict(start, command=["other", "--node_rank", "1"])}) is None
    other_plan = dict(start, plan={"per_device_train_batch_size": 4})
    assert "node 1 would run the plan" in nodes.disagreement({0: start, 1: other_plan})
    assert nodes.disagreement({0: start, 1: dict(start, resume_from=None)}) == \
        "node 1 would resume from the start, node 0 from /c/2"


def test_a_restarted_node_joins_the_attempt_its_peer_is_waiting_to_start():
    own = [{"type": "attempt_started", "attempt": 1}, {"type": "attempt_ended", "attempt": 1}]
    peer = own + [{"type": "node_ended", "attempt": 2}, {"type": "attempt_ended", "attempt": 2},
                  {"type": "attempt_started", "attempt": 3}]
    assert nodes.next_attempt(own, {1: peer}) == 3
    assert nodes.next_attempt(own + [{"type": "attempt_started", "attempt": 3}], {1: peer}) == 4


def test_decisions_and_checkpoints_a_dead_supervisor_missed_are_adopted_once():
    decision = {"v": 1, "ts": 5.0, "type": "decision", "attempt": 2, "rung": "halve_batch", "rung_index": 3}
    saved = {"v": 1, "ts": 4.0, "type": "checkpoint", "attempt": 2, "path": "/c/2", "step": 2}
    own = [{"type": "decision", "attempt": 1, "rung_index": 1}]
    adopted = nodes.missing(own, {1: [saved, decision], 2: [saved, decision]})
    assert adopted == [{"type": "checkpoint", "attempt": 2, "path": "/c/2", "step": 2, "adopted_from": 1},
                       {"type": "decision", "attempt": 2, "rung": "halve_batch", "rung_index": 3, "adopted_from": 1}]


# --- two supervisors, scripted workers -----------------------------------------------------------------

class Group:
    """A node's worker group: ends with `returncode`, or runs until stopped if it is None (stuck in a
    collective whose peer is gone)."""

    def __init__(self, returncode, on_stop=None):
        self.pid, self.returncode, self.on_stop, self.stopped_with, self.polls = 4242, returncode, on_stop, None, 0

    def poll(self):
        self.polls += 1
        return None if self.returncode is None or self.polls < 3 else self.returncode

    def stop(self, sig=signal.SIGTERM, grace=10.0, hurry=lambda: False):
        self.stopped_with = sig
        if self.on_stop:
            self.on_stop()
        return 1

    def reap_group(self):
        pass


class Node:
    """The launcher of one node: its n-th attempt does what the n-th behaviour says."""

    def __init__(self, *behaviours):
        self.behaviours, self.specs, self.groups = list(behaviours), [], []

    def __call__(self, spec):
        self.specs.append(spec)
        group = self.behaviours.pop(0)(Path(spec.env["OOMLADDER_ATTEMPT_DIR"]), spec.env)
        self.groups.append(group)
        return group


def _observed(folder, rank):
    (folder / f"observed.{rank}.json").write_text(json.dumps({"plan": WORLD, "facts": FACTS}))
    with open(folder / f"progress.{rank}.jsonl", "a") as f:
        f.writelines(json.dumps({"step": s, "max_steps": 6, "peak": 100 * s}) + "\n" for s in (1, 2))


def _failure(folder, rank, message, ts, exc_type="RuntimeError"):
    (folder / f"failure.{rank}.json").write_text(json.dumps({
        "exc_type": exc_type, "message": message, "step": 2, "max_steps": 6, "phase": "train", "ts": ts,
        "rank": rank, "world_size": 2}))


def ooms(rank, ts, checkpoint=None):
    def behaviour(folder, env):
        _observed(folder, rank)
        _failure(folder, rank, CPU_OOM, ts)
        if checkpoint is not None:
            path = Path(env["OOMLADDER_RUN_DIR"], "checkpoints", f"emergency-step-2-attempt-{env['OOMLADDER_ATTEMPT']}")
            path.mkdir(parents=True)
            (path / "trainer_state.json").write_text("{}")
            (path / "adapter_model.safetensors").write_text("")
            (folder / "emergency.0.json").write_text(json.dumps({"path": str(path), "step": 2}))
        return Group(1)
    return behaviour


def stuck_until_stopped(rank, ts):
    """Blocked in an all-reduce whose peer died: fails (later than the cause) only when stopped."""
    def behaviour(folder, env):
        _observed(folder, rank)
        return Group(None, on_stop=lambda: _failure(folder, rank, GLOO, ts))
    return behaviour


def dies_of_its_peer(rank, ts):
    def behaviour(folder, env):
        _observed(folder, rank)
        _failure(folder, rank, GLOO, ts)
        return Group(1)
    return behaviour


def finishes(rank):
    def behaviour(folder, env):
        _observed(folder, rank)
        return Group(0)
    return behaviour


def two_nodes(tmp_path, launchers, options=({}, {}), clock=time.time, sleep=time.sleep):
    ladder = parse_ladder("rungs: [halve_batch]", "test")
    codes = {}

    def supervise(rank):
        config = RunConfig(command=("torchrun", "--node_rank", str(rank), "train.py"), run_dir=tmp_path / "run",
                           ladder=ladder, poll_interval=0.01, nnodes=2, node_rank=rank, node_timeout=30,
                           **{"memory_cap": 2**30, **options[rank]})
        codes[rank] = Runner(config, launcher=launchers[rank], clock=clock, sleep=sleep, environ={}).run()

    threads = [threading.Thread(target=supervise, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    views = [fold(read_journal(nodes.journal_path(tmp_path / "run", rank))) for rank in (0, 1)]
    return [codes.get(0), codes.get(1)], views


@pytest.fixture(autouse=True)
def _look_at_peers_every_poll(monkeypatch):
    monkeypatch.setattr(watch, "PEER_LOOK_INTERVAL", 0.0)


def test_an_oom_on_one_node_stops_the_other_and_both_take_the_same_decision(tmp_path):
    node0 = Node(stuck_until_stopped(0, ts=101.0), finishes(0))
    node1 = Node(ooms(1, ts=100.0), finishes(1))
    codes, views = two_nodes(tmp_path, [node0, node1])
    assert codes == [0, 0]
    assert node0.groups[0].stopped_with == signal.SIGTERM  # not left waiting for a collective timeout
    for view in views:
        first, last = view.attempts
        assert first.failure.kind.value == "cpu_oom" and first.failure.rank == 1  # not node 0's broken collective
        assert [d.rung for d in view.decisions] == ["halve_batch"]
        assert (last.plan.per_device_train_batch_size, last.plan.gradient_accumulation_steps) == (8, 2)
        assert {a.plan.effective_batch for a in view.attempts} == {32}  # 16 x 1 x 2 nodes, then 8 x 2 x 2
    for node in (node0, node1):
        assert json.loads(node.specs[1].env["OOMLADDER_PLAN"])["per_device_train_batch_size"] == 8
    assert (tmp_path / "run" / "report.md").exists() and not (tmp_path / "run" / "report.node1.md").exists()


def test_rank_0s_checkpoint_on_one_node_is_where_every_node_resumes(tmp_path):
    node0 = Node(ooms(0, ts=100.0, checkpoint=True), finishes(0))
    node1 = Node(dies_of_its_peer(1, ts=100.5), finishes(1))
    codes, views = two_nodes(tmp_path, [node0, node1])
    assert codes == [0, 0]
    resumed = [node.specs[1].env.get("OOMLADDER_RESUME_FROM") for node in (node0, node1)]
    assert resumed[0] and resumed[0] == resumed[1] and resumed[0].endswith("emergency-step-2-attempt-001")
    assert [a.resumed_from for a in views[1].attempts] == [None, 2]
    assert views[0].attempts[0].failure.rank == 0 == views[1].attempts[0].failure.rank


def test_a_node_started_with_other_options_stops_every_node_before_any_rank_runs(tmp_path):
    node0, node1 = Node(finishes(0)), Node(finishes(1))
    from oomladder.plan import Plan
    codes, views = two_nodes(tmp_path, [node0, node1],
                             options=({}, {"initial": Plan(per_device_train_batch_size=4)}))
    assert codes == [2, 2]
    assert node0.specs == [] and node1.specs == []
    assert "the nodes disagree on attempt 1: node 1 would run the plan" in views[0].ended.reason
    assert views[1].attempts[0].status == "interrupted"


def test_a_node_started_with_another_memory_cap_stops_every_node(tmp_path):
    node0, node1 = Node(finishes(0)), Node(finishes(1))
    codes, views = two_nodes(tmp_path, [node0, node1], options=({}, {"memory_cap": 2**31}))
    assert codes == [2, 2] and node0.specs == [] == node1.specs
    assert "node 1 was started with another --memory-cap than node 0" in views[1].ended.reason


def test_a_node_that_never_starts_ends_the_run_after_the_timeout(tmp_path):
    clock = FakeClock()
    config = RunConfig(command=("torchrun", "train.py"), run_dir=tmp_path / "run", ladder=parse_ladder(
        "rungs: [halve_batch]", "test"), nnodes=2, node_rank=0, node_timeout=600)
    launcher = Node(finishes(0))
    code = Runner(config, launcher=launcher, clock=clock, sleep=clock.sleep, environ={}).run()
    view = fold(read_journal(tmp_path / "run" / "journal.jsonl"))
    assert code == 3 and launcher.specs == []
    assert view.ended.reason.startswith("node 1 did not start attempt 1 within 600 s")


def test_a_run_directory_of_one_node_is_not_taken_for_two(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    line = '{"v": 1, "type": "run_started", "ts": 0, "command": ["torchrun", "train.py"]}\n'
    (run_dir / "journal.jsonl").write_text(line)
    config = RunConfig(command=("torchrun", "train.py"), run_dir=run_dir, ladder=parse_ladder("rungs: [bf16]", "t"),
                       nnodes=2, node_rank=0)
    with pytest.raises(RunDirError, match="holds a run on 1 node"):
        Runner(config, launcher=Node(), environ={}).run()
    assert (run_dir / "journal.jsonl").read_text() == line


def test_a_node_whose_supervisor_died_is_taken_back_when_it_restarts(tmp_path):
    """Node 0's supervisor was killed in attempt 1 and its rank with it; node 1 waits for node 0's end.
    Restarted, node 0 journals that end for the dead one; to node 1 the world blinked (a retry on the
    same plan), and both go on with attempt 2."""
    run_dir = tmp_path / "run"
    ladder = parse_ladder("rungs: [halve_batch]", "test")

    def config(rank):
        return RunConfig(command=("torchrun", "--node_rank", str(rank), "train.py"), run_dir=run_dir, ladder=ladder,
                         poll_interval=0.01, nnodes=2, node_rank=rank, node_timeout=30, backoff=lambda state: 0.0)

    # What the dead supervisor left: its journal up to the attempt, and its rank's files.
    folder = nodes.attempt_dir(run_dir, 1, Topology(2, 0))
    folder.mkdir(parents=True)
    _observed(folder, 0)
    now = time.time()
    (run_dir / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"v": 1, "type": "run_started", "ts": now - 5, "command": list(config(0).command), "nnodes": 2,
         "ladder": ladder.to_dict(), "memory_cap": None},
        {"v": 1, "type": "observed", "ts": now - 5, "attempt": 0, "plan": {"allocator": ""}, "facts": {}},
        {"v": 1, "type": "attempt_started", "ts": now - 4, "attempt": 1, "rung": None, "plan": {}},
        {"v": 1, "type": "progress", "ts": now - 2, "attempt": 1, "rank": 0, "step": 2}]))
    node1 = Node(dies_of_its_peer(1, ts=now - 1), finishes(1))
    codes = {}
    survivor = threading.Thread(target=lambda: codes.update({1: Runner(config(1), launcher=node1, environ={}).run()}))
    survivor.start()
    def survivor_waits():
        path = nodes.journal_path(run_dir, 1)
        return path.exists() and any(r["type"] == "node_ended" for r in read_journal(path))

    deadline = time.time() + 20
    while not survivor_waits() and time.time() < deadline:
        time.sleep(0.01)
    node0 = Node(finishes(0))
    codes[0] = Runner(config(0), launcher=node0, environ={}).run()
    survivor.join(timeout=30)
    assert codes == {0: 0, 1: 0}
    views = [fold(read_journal(nodes.journal_path(run_dir, rank))) for rank in (0, 1)]
    assert views[1].attempts[0].failure.summary == "node 0's supervisor died during this attempt"
    assert [a.rung for a in views[1].attempts] == [None, "retry"]
    assert [a.rung for a in views[0].attempts] == [None, "resume"]
    assert views[0].attempts[1].plan == views[1].attempts[1].plan


def test_a_signal_to_one_node_stops_the_run_on_every_node(tmp_path):
    ladder = parse_ladder("rungs: [halve_batch]", "test")
    launchers = [Node(lambda folder, env: (_observed(folder, 0), Group(None))[1]),
                 Node(lambda folder, env: (_observed(folder, 1), Group(None, on_stop=lambda: _failure(
                     folder, 1, GLOO, time.time())))[1])]
    runners = [Runner(RunConfig(command=("torchrun", "train.py"), run_dir=tmp_path / "run", ladder=ladder,
                                poll_interval=0.01, nnodes=2, node_rank=rank, node_timeout=30),
                      launcher=launchers[rank], environ={}) for rank in (0, 1)]
    codes = {}
    threads = [threading.Thread(target=lambda r=rank: codes.update({r: runners[r].run()})) for rank in (0, 1)]
    for t in threads:
        t.start()
    deadline = time.time() + 20
    while not all(node.groups for node in launchers) and time.time() < deadline:
        time.sleep(0.01)
    runners[0].request_stop(signal.SIGTERM)  # a scheduler's pre-emption, seen by node 0 first
    for t in threads:
        t.join(timeout=30)
    assert codes == {0: 143, 1: 143}
    view1 = fold(read_journal(nodes.journal_path(tmp_path / "run", 1)))
    assert view1.ended.status == "interrupted"
    assert view1.ended.reason.startswith("node 0 was stopped (SIGTERM), and this node's group with it")
    assert launchers[1].groups[0].stopped_with == signal.SIGTERM


def test_resume_continues_a_node_from_its_own_journal(tmp_path):
    from oomladder.cli.commands import resume_config
    ladder = parse_ladder("rungs: [halve_batch]", "test")
    line = {"v": 1, "type": "run_started", "ts": 1.0, "command": ["torchrun", "train.py"], "ladder": ladder.to_dict(),
            "nnodes": 2, "node_rank": 1, "node_timeout": 120.0, "memory_cap": 2**30}
    (tmp_path / "journal.node1.jsonl").write_text(json.dumps(line) + "\n")
    config = resume_config(tmp_path, 1)
    assert (config.nnodes, config.node_rank, config.node_timeout, config.memory_cap) == (2, 1, 120.0, 2**30)
    with pytest.raises(RunDirError, match="it has no journal.jsonl"):
        resume_config(tmp_path, 0)


def test_a_supervisor_that_died_after_telling_its_end_is_not_told_again(tmp_path):
    journal_file = tmp_path / "journal.node1.jsonl"
    told = {"v": 1, "type": "node_ended", "ts": 2.0, "attempt": 1, "node": 1, "failure": OOM, "failed_at": 1.5}
    journal_file.write_text(json.dumps(told) + "\n")
    from oomladder.nodes.world import World
    from oomladder.record.journal import Journal
    with Journal(journal_file) as journal:
        World(tmp_path, Topology(2, 1), 10, 0.01, time.time, time.sleep, lambda: False).orphan_ended(
            journal, 1, died=2.0, checkpoint=None)
    assert [r["type"] for r in read_journal(journal_file)] == ["node_ended"]
