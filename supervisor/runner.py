"""The loop that wires it together: launch an attempt, watch it, classify its death, ask the
ladder for the next plan, and write every step to the journal before acting on it.

Clock, sleep, launcher and display are parameters: the policy is tested without processes and
without waiting, and the same loop runs real workers end to end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

from supervisor import __version__, cgroup, checkpoints, gpu, nodes
from tenacity import wait_exponential

from supervisor.budget import BudgetState, budgets, exhausted
from supervisor.classify import Evidence, Failure, Kind, classify
from supervisor.display import Display, NullDisplay
from supervisor.errors import RunDirError
from supervisor.history import RunView, fold
from supervisor.foresight import fit_for, plan_ahead
from supervisor.journal import Journal, read_journal
from supervisor.ladder import Ladder
from supervisor.launch import substitute, worker_env
from supervisor.plan import Plan, describe_changes
from supervisor.process import LaunchError, LaunchSpec, Launcher, read_tail, spawn
from supervisor.report import write_reports
from supervisor.world import World
from supervisor.worker import emergency, files

# Exit codes (README, "Exit codes").
EXIT_FINISHED = 0
EXIT_USAGE = 2
EXIT_NOT_MEMORY = 3
EXIT_LADDER_EXHAUSTED = 4
EXIT_BUDGET = 5
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}
# Failures that no plan causes: the same plan again, this many times in a row at most.
RETRIES_ON_SAME_PLAN = {Kind.HANG: 1, Kind.TRANSIENT: 3}
# A peer node failed: this node's ranks have no step to finish (their collective is broken), so a short grace.
PEER_GRACE = 10.0
PEER_LOOK_INTERVAL = 1.0  # seconds between looks at the peers' journals during an attempt


@dataclass(frozen=True)
class RunConfig:
    command: tuple[str, ...]
    run_dir: Path
    ladder: Ladder
    memory_cap: int | None = None
    max_attempts: int = 10
    max_wall_time: float | None = None            # seconds for this invocation, attempts included
    hang_timeout: float | None = None             # seconds without progress or output before a worker is stopped
    # tenacity wait policy before retrying a transient failure: 5 s, 10 s, 20 s, ...
    backoff: Callable[[Any], float] = field(default_factory=lambda: wait_exponential(multiplier=5, max=300))
    initial: Plan = field(default_factory=Plan)   # --set values
    poll_interval: float = 0.25
    grace: float = 60.0                           # seconds between SIGTERM and SIGKILL: a step and its save
    cwd: str = field(default_factory=os.getcwd)
    nnodes: int = 1                               # one supervisor per node, all sharing run_dir (supervisor/nodes.py)
    node_rank: int = 0
    node_timeout: float = 600.0                   # seconds to wait for the other nodes at an attempt's start and end


class Runner:
    def __init__(self, config: RunConfig, *, launcher: Launcher = spawn, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, display: Display | None = None,
                 environ: dict[str, str] | None = None) -> None:
        # Workers run in the command's own folder: every path handed to them must be absolute.
        self.config = config = dataclasses.replace(config, run_dir=config.run_dir.resolve())
        self.launcher, self.clock, self.sleep = launcher, clock, sleep
        self.display = display or NullDisplay()
        self.environ = dict(os.environ if environ is None else environ)
        self._signal: int | None = None
        self._stop: tuple[str, Any] | None = None   # why the runner itself stopped a worker
        self._budgets = budgets(config.max_attempts, config.max_wall_time)
        self._started = 0.0
        self._attempts_this_run = 0
        self._offsets: dict[Path, int] = {}
        self._observed: dict[Path, Any] = {}
        self.topology = nodes.Topology(config.nnodes, config.node_rank)
        self.world = World(config.run_dir, self.topology, config.node_timeout, config.poll_interval, clock, sleep,
                           lambda: self._signal is not None) if self.topology.multi else None

    # --- public ---------------------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.config
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        own = nodes.journal_path(cfg.run_dir, cfg.node_rank)
        # Before this node's journal file exists: bad input leaves the run directory as it was.
        nodes.check_node_count([read_journal(own) if own.exists() else []] + (self.world.journals() if self.world
                                                                               else []), cfg.nnodes, cfg.run_dir)
        journal = Journal(own, self.clock)
        try:
            overrides, rung, reason = self._starting_point(journal)
        except BaseException:
            journal.close()  # refused before starting: the directory stays exactly as it was
            raise
        try:
            journal.append("run_started", command=list(cfg.command), ladder=cfg.ladder.to_dict(),
                           memory_cap=cfg.memory_cap, max_attempts=cfg.max_attempts, cwd=cfg.cwd,
                           max_wall_time=cfg.max_wall_time, hang_timeout=cfg.hang_timeout,
                           version=__version__, initial=cfg.initial.set_fields(),
                           **({"nnodes": cfg.nnodes, "node_rank": cfg.node_rank, "node_timeout": cfg.node_timeout}
                              if self.topology.multi else {}))
            if self.world is not None:
                self.world.since = journal.records[-1]["ts"]
            with _forwarded_signals(self):
                return self._loop(journal, overrides, rung, reason)
        finally:
            view = fold(journal.records)
            if cfg.node_rank == 0:  # node 0's journal holds the world's run; other nodes' reports would collide
                write_reports(cfg.run_dir, view)
            self.display.close(view)
            journal.close()

    def request_stop(self, signum: int) -> None:
        self._signal = signum

    # --- the loop ---------------------------------------------------------------------------------

    def _loop(self, journal: Journal, overrides: Plan, rung: str | None, reason: str) -> int:
        cfg = self.config
        self._started = self.clock()
        self._attempts_this_run = 0
        if not any(r["type"] == "observed" for r in journal.records):
            allocator = self.environ.get("PYTORCH_ALLOC_CONF", self.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""))
            journal.append("observed", attempt=0, source="environment", plan={"allocator": allocator}, facts={})
        while True:
            number = max((r["attempt"] for r in journal.records if r["type"] == "attempt_started"), default=0) + 1
            if self.world is not None:
                number = self.world.next_attempt(journal.records)
            self._attempts_this_run += 1
            view = fold(journal.records)
            plan = view.program_plan.merged(overrides)
            attempt_dir = nodes.attempt_dir(cfg.run_dir, number, self.topology)
            attempt_dir.mkdir(parents=True, exist_ok=True)
            argv = substitute(cfg.command, plan)
            first_start = next(r["ts"] for r in journal.records if r["type"] == "run_started")
            output_dir = Path(cfg.cwd, view.facts.output_dir) if view.facts.output_dir else None
            resume = checkpoints.latest(view.checkpoints, output_dir, since=first_start)
            journal.append("attempt_started", attempt=number, rung=rung, reason=reason, plan=overrides.to_dict(),
                           command=argv, attempt_dir=str(attempt_dir), resume_from=resume)
            if self.world is not None and (code := self._agree_on_start(journal, number)) is not None:
                return code
            self.display.event(f"attempt {number}: {rung or 'start'}"
                               + (f" ({reason})" if reason else "") + f"; log: {attempt_dir / 'stderr.log'}")
            failure = self._attempt(journal, number, attempt_dir, argv, overrides, plan, resume,
                                    _evaluation_owed(view, resume))
            outcome = self._after(journal, number, attempt_dir, failure)
            if isinstance(outcome, int):
                return outcome
            overrides, rung, reason = outcome

    def _after(self, journal: Journal, number: int, attempt_dir: Path,
               failure: Failure | None) -> int | tuple[Plan, str | None, str]:
        """What an attempt's end means: the exit code of the run, or the next (plan, rung, reason)."""
        cfg = self.config
        view = fold(journal.records)
        if failure is None:
            _remove_checkpoints(view, keep=None)
            return self._end(journal, "finished", EXIT_FINISHED, _finished_reason(view))
        if self._stop is not None:
            return self._end_stopped(journal)
        if failure.kind is Kind.LAUNCH_FAILED:
            return self._end(journal, "launch_failed", EXIT_USAGE, failure.summary)
        current = view.attempts[-1].plan
        if failure.kind in RETRIES_ON_SAME_PLAN:
            streak = _streak(view, failure.kind)
            if streak > RETRIES_ON_SAME_PLAN[failure.kind]:
                return self._end(journal, failure.kind.value, EXIT_NOT_MEMORY,
                                 f"attempt {number}: {failure.summary}, {streak} times in a row; stopped after "
                                 f"{RETRIES_ON_SAME_PLAN[failure.kind]} retries. See {attempt_dir / 'stderr.log'}")
            delay = cfg.backoff(BudgetState(streak, 0.0)) if failure.kind is Kind.TRANSIENT else 0.0
            why = f"{failure.summary}: retry {streak} on the same plan" + (f" after {delay:g} s" if delay else "")
            journal.append("decision", attempt=number, rung="retry", rung_index=None, reason=why,
                           plan=current.to_dict(), changes="-", skipped=[])
            self.display.event(f"attempt {number}: {why}")
            self.sleep(delay)
            return self._next_or_budget(journal, (current, "retry", why))
        if not failure.is_memory:
            return self._end(journal, "not_memory", EXIT_NOT_MEMORY,
                             f"attempt {number} failed with {failure.kind.value}: {failure.summary}. No memory "
                             f"setting fixes this, so the ladder was not walked; see {attempt_dir / 'stderr.log'}")
        # Each node calibrates the estimate from its own ranks' peaks, and every node must take the same
        # decision: on several nodes the ladder walks one rung per attempt.
        fit = fit_for(view, cfg.memory_cap) if self.world is None else None
        decision = plan_ahead(cfg.ladder, current, view.facts, failure, view.rung_uses, fit)
        journal.append("decision", attempt=number, rung=decision.rung, rung_index=decision.rung_index,
                       rung_indices=list(decision.rung_indices), reason=decision.reason,
                       plan=decision.plan.to_dict() if decision.plan else None,
                       changes=describe_changes(current, decision.plan) if decision.plan else None,
                       skipped=[list(s) for s in decision.skipped], estimate=decision.estimate)
        if decision.exhausted:
            tried = "; ".join(f"{name}: {why}" for name, why in decision.skipped) or "none applied"
            return self._end(journal, "ladder_exhausted", EXIT_LADDER_EXHAUSTED,
                             f"attempt {number} ran out of memory and {decision.reason} ({tried}). Try a "
                             f"bigger device, a smaller model or sequence, or a ladder with more rungs.")
        self.display.event(f"attempt {number}: {failure.summary}; next: {decision.rung}: "
                           f"{describe_changes(current, decision.plan)}")
        return self._next_or_budget(journal, (decision.plan, decision.rung, decision.reason))

    def _next_or_budget(self, journal: Journal, nxt: tuple[Plan, str | None, str]) -> int | tuple[Plan, str | None, str]:
        spent = exhausted(self._budgets, self._budget_state())
        if spent is None:
            return nxt
        return self._end(journal, "budget_exhausted", EXIT_BUDGET,
                         f"the {spent.flag} budget ({spent.text}) is spent; the next attempt would have been: "
                         f"{nxt[1]}. Run the same command again to continue.")

    def _budget_state(self) -> BudgetState:
        return BudgetState(self._attempts_this_run, self.clock() - self._started)

    def _end_stopped(self, journal: Journal) -> int:
        why, detail = self._stop
        if why == "signal":
            return self._end(journal, "interrupted", EXIT_INTERRUPTED.get(detail, 130),
                             f"oomladder received {signal.Signals(detail).name}; the worker group was stopped. "
                             f"Run the same command again (or oomladder resume) to continue.")
        if why == "peer":
            return self._end(journal, detail["status"], detail["exit_code"],
                             f"node {detail['node']} was stopped ({detail['why']}), and this node's group with it. "
                             f"Run the same command on every node to continue.")
        return self._end(journal, "budget_exhausted", EXIT_BUDGET,
                         f"the {detail.flag} budget ({detail.text}) ran out during an attempt; its worker group was "
                         f"stopped. Run the same command again to continue.")

    def _end(self, journal: Journal, status: str, exit_code: int, reason: str) -> int:
        journal.append("run_ended", status=status, exit_code=exit_code, reason=reason)
        self.display.event(f"{status.replace('_', ' ')}: {reason}")
        return exit_code

    def _attempt(self, journal: Journal, number: int, attempt_dir: Path, argv: list[str], overrides: Plan,
                 plan: Plan, resume: dict[str, Any] | None, evaluate_at: int | None) -> Failure | None:
        cfg = self.config
        env = worker_env(self.environ, attempt_dir, overrides, plan, cfg.memory_cap,
                         resume["path"] if resume else None, evaluate_at, run_dir=cfg.run_dir)
        spec = LaunchSpec(tuple(argv), env, cfg.cwd, attempt_dir / "stdout.log", attempt_dir / "stderr.log")
        oom_kills_before = cgroup.oom_kill_count()
        gpu_before = gpu.gpu_pids()
        started = self.clock()
        try:
            handle = self.launcher(spec)
        except LaunchError as exc:
            failure = Failure(Kind.LAUNCH_FAILED, None, str(exc))
            return self._ended(journal, number, "failed", failure,
                               {"attempt": number, "exit_code": None, "duration": 0.0})
        hung: float | None = None
        last_activity, activity, shown, peeked = started, None, 0.0, started
        while (returncode := handle.poll()) is None:
            if self._signal is not None:
                self._stop = ("signal", self._signal)
            elif (spent := exhausted(self._budgets, self._budget_state())) is not None and \
                    spent.flag == "--max-wall-time":
                self._stop = ("budget", spent)
            if self._stop is not None:
                journal.append("interrupt", attempt=number, reason=self._stop[0],
                               detail=str(getattr(self._stop[1], "flag", self._stop[1])))
                returncode = handle.stop(self._stop[1] if self._stop[0] == "signal" else signal.SIGTERM, cfg.grace)
                break
            if self.world is not None and self.clock() - peeked >= PEER_LOOK_INTERVAL:
                peeked = self.clock()
                if (failed := self.world.peer_failed(number)) is not None:
                    journal.append("interrupt", attempt=number, reason="peer", detail=f"node {failed} failed")
                    returncode = handle.stop(signal.SIGTERM, min(cfg.grace, PEER_GRACE))
                    break
            self._ingest(journal, number, attempt_dir)
            # Activity is any new record or output; totals, so a steady one record per poll counts too.
            now_activity = (len(journal.records), _size(spec.stdout), _size(spec.stderr))
            if now_activity != activity:
                activity, last_activity = now_activity, self.clock()
            elif cfg.hang_timeout and self.clock() - last_activity > cfg.hang_timeout:
                hung = self.clock() - last_activity
                journal.append("interrupt", attempt=number, reason="hang", detail=f"{hung:.0f}s without progress")
                returncode = handle.stop(signal.SIGTERM, cfg.grace)
                break
            if self.display.live and self.clock() - shown >= 0.5:  # the table redraws twice a second at most
                self.display.update(fold(journal.records))
                shown = self.clock()
            self.sleep(cfg.poll_interval)
        exited = self.clock()
        handle.reap_group()
        released = gpu.wait_released(gpu_before)
        if released == "still held":
            journal.append("warning", attempt=number, text="GPU memory of the stopped worker was still held after "
                           "30 s; the next attempt may fail on it")
        self._ingest(journal, number, attempt_dir)
        view = fold(journal.records)
        attempt = view.attempts[-1]
        ended = dict(attempt=number, exit_code=returncode, duration=round(exited - started, 3),
                     exited=round(exited, 3), step=attempt.step, max_steps=attempt.max_steps)
        if returncode == 0 and self._stop is None:
            return self._ended(journal, number, "finished", None, ended)
        record = _first_failure_record(attempt_dir)
        if record and ended["max_steps"] is None:
            ended["max_steps"] = record.get("max_steps")
        oom_kills_after = cgroup.oom_kill_count()
        if hung is not None:
            failure = Failure(Kind.HANG, None, f"no progress for {hung:.0f} s (--hang-timeout {cfg.hang_timeout:g})",
                              step=attempt.step)
        else:
            capped = bool(cfg.memory_cap) and view.facts.device in (None, "cpu")
            failure = classify(Evidence(
                returncode=returncode, record=record, stderr_tail=read_tail(spec.stderr), capped=capped,
                cgroup_oom_kill=None not in (oom_kills_before, oom_kills_after) and oom_kills_after > oom_kills_before))
        checkpoint = self._journal_checkpoint(journal, number, attempt_dir)
        if record and record.get("peak") is not None:
            ended.update(peak=record["peak"], peak_measure=record.get("peak_measure"))
        if record and record.get("batch_shape"):
            ended["batch_shape"] = record["batch_shape"]
        outcome = "interrupted" if self._stop is not None or failure.kind is Kind.INTERRUPTED else "failed"
        return self._ended(journal, number, outcome, failure, ended, record, checkpoint)

    def _ended(self, journal: Journal, number: int, outcome: str, failure: Failure | None, ended: dict[str, Any],
               record: dict[str, Any] | None = None, checkpoint: dict[str, Any] | None = None) -> Failure | None:
        """Journal the attempt's end; on several nodes, the world's end once every node has told its own."""
        if self.world is not None:
            outcome, failure, ended = self._world_end(journal, number, outcome, failure, ended, record, checkpoint)
        journal.append("attempt_ended", outcome=outcome, **({"failure": failure.to_dict()} if failure else {}),
                       **ended)
        return failure

    def _ingest(self, journal: Journal, number: int, attempt_dir: Path) -> None:
        """Copy what the worker reported since the last look into the journal."""
        for path in sorted(attempt_dir.glob(f"{files.OBSERVED}.*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if self._observed.get(path) != data:
                self._observed[path] = data
                journal.append("observed", attempt=number, rank=_rank_of(path), plan=data.get("plan", {}),
                               facts=data.get("facts", {}), memory_cap=data.get("memory_cap", {}),
                               model=data.get("model"))
        for path in sorted(attempt_dir.glob(f"{files.PROGRESS}.*.jsonl")):
            offset = self._offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except OSError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next look
            self._offsets[path] = offset + len(complete)
            entries = []
            for line in complete.decode("utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                entry.pop("ts", None)
                entries.append({"attempt": number, "rank": _rank_of(path), **entry})
            journal.extend("progress", entries)

    def _close_orphans(self, journal: Journal, view: RunView) -> None:
        """An attempt the journal never saw end: its supervisor died. Take in what its worker left."""
        for attempt in view.attempts:
            if attempt.status != "running":
                continue
            attempt_dir = nodes.attempt_dir(self.config.run_dir, attempt.number, self.topology)
            died = journal.records[-1]["ts"]  # about when: the supervisor journaled at every poll until then
            self._ingest(journal, attempt.number, attempt_dir)
            checkpoint = self._journal_checkpoint(journal, attempt.number, attempt_dir)
            if self.world is not None:
                self.world.orphan_ended(journal, attempt.number, died, checkpoint)
            journal.append("attempt_ended", attempt=attempt.number, outcome="interrupted", exit_code=None,
                           failure=Failure(Kind.INTERRUPTED, None, "the supervisor died during this attempt").to_dict())

    def _journal_checkpoint(self, journal: Journal, number: int, attempt_dir: Path) -> dict[str, Any] | None:
        checkpoint = _read_json(files.path(emergency.EMERGENCY, 0, attempt_dir))
        if checkpoint and Path(checkpoint.get("path", "")).is_dir():
            journal.append("checkpoint", attempt=number, kind="emergency", path=checkpoint["path"],
                           step=checkpoint["step"])
            _remove_checkpoints(fold(journal.records), keep=checkpoint["path"])
            return {"path": checkpoint["path"], "step": checkpoint["step"]}
        return None

    # --- several nodes (supervisor/world.py): the runner's side, kept apart from the single-node loop ---

    def _agree_on_start(self, journal: Journal, number: int) -> int | None:
        """None: every node starts attempt `number` on the same plan; otherwise the run's exit code."""
        ending = self.world.agree_on_start(journal, number)
        if ending is None:
            return None
        code = ending.exit_code
        if code is None:
            code = {"node_lost": EXIT_NOT_MEMORY, "nodes_disagree": EXIT_USAGE}.get(
                ending.status, EXIT_INTERRUPTED.get(self._signal, 130))
        return self._end(journal, ending.status, code, ending.reason)

    def _world_end(self, journal: Journal, number: int, outcome: str, failure: Failure | None, ended: dict[str, Any],
                   record: dict[str, Any] | None, checkpoint: dict[str, Any] | None,
                   ) -> tuple[str, Failure | None, dict[str, Any]]:
        """This node's end in, the world's end out: the same on every node, for `_after`'s usual decision."""
        failed_at = None
        if failure is not None:  # when this node's first failure happened: its rank's record, or the stop it began
            stop = nodes.of_attempt(journal.records, "interrupt", number)
            times = [t for t in ((record or {}).get("ts"), stop["ts"] if stop else None) if t is not None]
            failed_at = min(times) if times else ended.get("exited") or self.clock()
        stopped = None
        if self._stop is not None and self._stop[0] in ("signal", "budget"):
            why, detail = self._stop
            stopped = ({"why": signal.Signals(detail).name, "status": "interrupted",
                        "exit_code": EXIT_INTERRUPTED.get(detail, 130)} if why == "signal" else
                       {"why": f"the {detail.flag} budget ran out", "status": "budget_exhausted",
                        "exit_code": EXIT_BUDGET})
        if ended.get("peak") is None and (attempt := fold(journal.records).attempts[-1]).peak is not None:
            ended = {**ended, "peak": attempt.peak, "peak_measure": attempt.peak_measure}  # this node's ranks' highest
        outcome, failure, ended, peer_stop, adopted = self.world.end(journal, number, outcome, failure, ended,
                                                                     failed_at, checkpoint, stopped)
        if adopted:
            _remove_checkpoints(fold(journal.records), keep=adopted[-1])
        if self._signal is not None and self._stop is None:
            self._stop = ("signal", self._signal)  # stopped while waiting for the other nodes
        elif peer_stop is not None and self._stop is None:
            self._stop = ("peer", peer_stop)
        return outcome, failure, ended

    def _starting_point(self, journal: Journal) -> tuple[Plan, str | None, str]:
        """A fresh run starts on the program's own settings; a run directory that already holds a run of
        the same command continues on the plan that run had reached."""
        cfg = self.config
        if not journal.records:
            given = cfg.initial.set_fields()
            return cfg.initial, None, ("given with --set" if given else "")
        view = fold(journal.records)
        if view.run and view.run.get("command") != list(cfg.command):
            raise RunDirError(f"run directory '{cfg.run_dir}' holds a run of another command "
                              f"({' '.join(view.run.get('command', []))}): give this run its own --run-dir")
        self._close_orphans(journal, view)
        if self.world is not None:
            self.world.adopt_missed(journal)
        plan = _reached_plan(fold(journal.records)).merged(cfg.initial)
        return plan, "resume", "continues on the plan the earlier run reached"


def _reached_plan(view: RunView) -> Plan:
    last = view.decisions[-1] if view.decisions else None
    if last and last.get("plan") and (not view.attempts or last["attempt"] >= view.attempts[-1].number):
        return Plan.from_dict(last["plan"])
    return view.attempts[-1].plan if view.attempts else Plan()


def _streak(view: RunView, kind: Kind) -> int:
    """How many attempts in a row, up to the last, died of `kind`."""
    count = 0
    for attempt in reversed(view.attempts):
        if attempt.failure is None or attempt.failure.kind is not kind:
            break
        count += 1
    return count


def _evaluation_owed(view: RunView, resume: dict[str, Any] | None) -> int | None:
    """The step whose evaluation an OOM cut short, if the next attempt resumes right there."""
    last = view.attempts[-1] if view.attempts else None
    failure = last.failure if last else None
    if resume and failure is not None and failure.phase == "eval" and failure.step == resume["step"]:
        return resume["step"]
    return None


def _remove_checkpoints(view: RunView, keep: str | None) -> None:
    """Emergency checkpoints are ours: each is superseded by the next one, and all by a finished run."""
    for record in view.checkpoints:
        if record["path"] != keep and record.get("kind") == "emergency":
            shutil.rmtree(record["path"], ignore_errors=True)


def _finished_reason(view: RunView) -> str:
    ooms = sum(1 for a in view.attempts if a.failure is not None and a.failure.is_memory)
    last = view.attempts[-1]
    batch = view.final_plan.effective_batch
    text = f"every step ran; attempt {last.number} finished"
    if ooms:
        text += f" after {ooms} out-of-memory error{'s' if ooms > 1 else ''}"
    return text + (f"; effective batch {batch} throughout" if batch else "")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _first_failure_record(attempt_dir: Path) -> dict[str, Any] | None:
    """The earliest failure record of any rank: the root cause, not a peer dying of it."""
    records = []
    for path in attempt_dir.glob(f"{files.FAILURE}.*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return min(records, key=lambda r: r.get("ts", float("inf"))) if records else None


def _rank_of(path: Path) -> int:
    try:
        return int(path.name.split(".")[1])
    except (IndexError, ValueError):
        return 0


class _forwarded_signals:
    """SIGINT/SIGTERM ask the runner to stop the worker group gracefully instead of killing oomladder."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> None:
        import threading
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, lambda signum, frame: self.runner.request_stop(signum))

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
