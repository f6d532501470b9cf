"""The run loop: start an attempt, let the watcher see it through, ask `decide` what comes next, and
journal each step before acting on it.

The loop only journals, sleeps and launches. Watching an attempt is watch.py's, deciding what it
means is decide.py's (pure), and several nodes are oomladder/nodes'. Clock, sleep, launcher and
display are parameters: the policy is tested without processes and without waiting, and the same
loop runs real workers end to end.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oomladder import __version__
from oomladder.classify import Failure, Kind
from oomladder.errors import RunDirError
from oomladder.ladder import Decision
from oomladder.nodes import agreement
from oomladder.nodes.topology import Topology, attempt_dir, journal_path
from oomladder.nodes.world import World
from oomladder.plan import describe_changes
from oomladder.process.checkpoints import latest, remove_partial, remove_superseded
from oomladder.process.launch import substitute
from oomladder.process.workers import Launcher, spawn
from oomladder.record import schema
from oomladder.record.history import RunView, fold
from oomladder.record.journal import Journal, read_journal
from oomladder.run.budget import Budget, BudgetState, budgets, exhausted
from oomladder.run.config import (
    EXIT_INTERRUPTED,
    EXIT_NOT_MEMORY,
    EXIT_USAGE,
    RunConfig,
)
from oomladder.run.decide import decide, evaluation_owed, over_budget, reached_plan
from oomladder.run.notify import Notifier
from oomladder.run.outcomes import (
    AttemptResult,
    End,
    Next,
    NextAttempt,
    Retry,
    RunStatus,
)
from oomladder.run.watch import AttemptWatcher, Launch
from oomladder.views.display import Display, NullDisplay
from oomladder.views.report import write_reports
from oomladder.worker.files import AttemptFiles


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
        self._budgets = budgets(config.max_attempts, config.max_wall_time)
        self._started = 0.0
        self._attempts_this_run = 0
        self.topology = Topology(config.nnodes, config.node_rank)
        self.world = World(config.run_dir, self.topology, config.node_timeout, config.poll_interval, clock, sleep,
                           lambda: self._signal is not None) if self.topology.multi else None
        self.journal: Journal | None = None
        self.watcher: AttemptWatcher | None = None
        self.notifier: Notifier | None = None

    # --- public ---------------------------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.config
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        own = journal_path(cfg.run_dir, cfg.node_rank)
        # Before this node's journal file exists: bad input leaves the run directory as it was.
        agreement.check_node_count([read_journal(own) if own.exists() else []]
                                   + (self.world.journals() if self.world else []), cfg.nnodes, cfg.run_dir)
        self.journal = journal = Journal(own, self.clock)
        # Node 0 tells the news, as it writes the reports: every node takes the same decisions.
        self.notifier = Notifier(cfg.notify if cfg.node_rank == 0 else (), journal, self.display, cfg.run_dir)
        self.watcher = AttemptWatcher(cfg, journal, launcher=self.launcher, clock=self.clock, sleep=self.sleep,
                                      display=self.display, environ=self.environ, world=self.world,
                                      signalled=lambda: self._signal, wall_time_spent=self._wall_time_spent)
        try:
            first = self._starting_point()
        except BaseException:
            journal.close()  # refused before starting: the directory stays exactly as it was
            raise
        try:
            self._journal_run_started()
            with _forwarded_signals(self):
                return self._loop(first)
        finally:
            remove_partial(cfg.run_dir)
            view = fold(journal.records)
            if cfg.node_rank == 0:  # node 0's journal holds the world's run; other nodes' reports would collide
                write_reports(cfg.run_dir, view)
            self.notifier.ended(view, cfg.run_dir / "report.html")
            self.display.close(view)
            journal.close()

    def request_stop(self, signum: int) -> None:
        self._signal = signum

    # --- the loop -------------------------------------------------------------------------------------

    def _loop(self, nxt: NextAttempt) -> int:
        self._started = self.clock()
        self._attempts_this_run = 0
        self._observe_environment()
        while True:
            launch = self._start_attempt(nxt)
            if self.world is not None and (code := self._agree_on_start(launch.number)) is not None:
                return code
            self.display.event(f"attempt {launch.number}: {nxt.rung or 'start'}"
                               + (f" ({nxt.reason})" if nxt.reason else "") + f"; log: {launch.attempt_dir / 'stderr.log'}")
            result = self.watcher.watch(launch)
            verdict = decide(fold(self.journal.records), result, self.config.ladder, memory_cap=self.config.memory_cap,
                             several_nodes=self.world is not None, backoff=self.config.backoff,
                             log=launch.attempt_dir / "stderr.log")
            step = self._act(result, verdict)
            if isinstance(step, int):
                return step
            nxt = step

    def _start_attempt(self, nxt: NextAttempt) -> Launch:
        """Journal the next attempt's start: its number, plan, command and the checkpoint it resumes from."""
        cfg, records = self.config, self.journal.records
        number = max((r["attempt"] for r in records if r["type"] == schema.ATTEMPT_STARTED), default=0) + 1
        if self.world is not None:
            number = self.world.next_attempt(records)
        self._attempts_this_run += 1
        view = fold(records)
        plan = view.program_plan.merged(nxt.overrides)
        folder = attempt_dir(cfg.run_dir, number, self.topology)
        folder.mkdir(parents=True, exist_ok=True)
        argv = substitute(cfg.command, plan)
        first_start = next(r["ts"] for r in records if r["type"] == schema.RUN_STARTED)
        output_dir = Path(cfg.cwd, view.facts.output_dir) if view.facts.output_dir else None
        resume = latest(view.checkpoints, output_dir, since=first_start)
        self.journal.append(schema.ATTEMPT_STARTED, attempt=number, rung=nxt.rung, reason=nxt.reason,
                            plan=nxt.overrides.to_dict(), command=argv, attempt_dir=str(folder), resume_from=resume)
        return Launch(number, folder, argv, nxt.overrides, plan, resume, evaluation_owed(view, resume), nxt.rung,
                      nxt.reason)

    def _act(self, result: AttemptResult, verdict: Next) -> int | NextAttempt:
        """Journal what `decide` chose and carry it out: the run's exit code, or the next attempt."""
        number = result.number
        if isinstance(verdict, End):
            if verdict.decision is not None:
                self._journal_decision(number, verdict.decision)
            if verdict.status == RunStatus.FINISHED.value:
                remove_superseded(fold(self.journal.records).checkpoints, keep=None)
            return self._end(verdict)
        if isinstance(verdict, Retry):
            self.journal.append(schema.DECISION, attempt=number, rung="retry", rung_index=None, reason=verdict.reason,
                                plan=verdict.plan.to_dict(), changes="-", skipped=[])
            self.display.event(f"attempt {number}: {verdict.reason}")
            self.sleep(verdict.delay)
            nxt = NextAttempt(verdict.plan, "retry", verdict.reason)
        else:
            changes = self._journal_decision(number, verdict.decision)
            self.display.event(f"attempt {number}: {result.failure.summary}; next: {verdict.decision.rung}: {changes}")
            nxt = NextAttempt(verdict.decision.plan, verdict.decision.rung, verdict.decision.reason)
        ending = over_budget(exhausted(self._budgets, self._budget_state()), nxt.rung)
        if ending is not None:
            return self._end(ending)
        if not isinstance(verdict, Retry):  # a fallback that will run: news
            self.notifier.fallback(fold(self.journal.records), number)
        return nxt

    def _journal_decision(self, number: int, decision: Decision) -> str | None:
        """The ladder's decision as the journal keeps it; returns what it changes."""
        current = fold(self.journal.records).attempts[-1].plan
        changes = describe_changes(current, decision.plan) if decision.plan else None
        self.journal.append(schema.DECISION, attempt=number, rung=decision.rung, rung_index=decision.rung_index,
                            rung_indices=list(decision.rung_indices), reason=decision.reason,
                            plan=decision.plan.to_dict() if decision.plan else None, changes=changes,
                            skipped=[list(s) for s in decision.skipped], estimate=decision.estimate)
        return changes

    def _end(self, end: End) -> int:
        self.journal.append(schema.RUN_ENDED, status=end.status, exit_code=end.exit_code, reason=end.reason)
        self.display.event(f"{end.status.replace('_', ' ')}: {end.reason}")
        return end.exit_code

    # --- budgets --------------------------------------------------------------------------------------

    def _budget_state(self) -> BudgetState:
        return BudgetState(self._attempts_this_run, self.clock() - self._started)

    def _wall_time_spent(self) -> Budget | None:
        spent = exhausted(self._budgets, self._budget_state())
        return spent if spent is not None and spent.flag == "--max-wall-time" else None

    # --- the start of a run ---------------------------------------------------------------------------

    def _journal_run_started(self) -> None:
        cfg = self.config
        self.journal.append(schema.RUN_STARTED, command=list(cfg.command), ladder=cfg.ladder.to_dict(),
                            memory_cap=cfg.memory_cap, max_attempts=cfg.max_attempts, cwd=cfg.cwd,
                            max_wall_time=cfg.max_wall_time, hang_timeout=cfg.hang_timeout,
                            version=__version__, initial=cfg.initial.set_fields(),
                            # The targets, secrets and all, so that resume tells the same people (README).
                            **({"notify": list(cfg.notify)} if cfg.notify else {}),
                            **({"nnodes": cfg.nnodes, "node_rank": cfg.node_rank, "node_timeout": cfg.node_timeout}
                               if self.topology.multi else {}))
        if self.world is not None:
            self.world.since = self.journal.records[-1]["ts"]

    def _observe_environment(self) -> None:
        """The allocator setting the program would run with on its own: the first plan's, once per run."""
        if not any(r["type"] == schema.OBSERVED for r in self.journal.records):
            allocator = self.environ.get("PYTORCH_ALLOC_CONF", self.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""))
            self.journal.append(schema.OBSERVED, attempt=0, source="environment", plan={"allocator": allocator},
                                facts={})

    def _starting_point(self) -> NextAttempt:
        """A fresh run starts on the program's own settings; a run directory that already holds a run of
        the same command continues on the plan that run had reached."""
        cfg = self.config
        if not self.journal.records:
            given = cfg.initial.set_fields()
            return NextAttempt(cfg.initial, None, "given with --set" if given else "")
        view = fold(self.journal.records)
        if view.run and view.run.get("command") != list(cfg.command):
            raise RunDirError(f"run directory '{cfg.run_dir}' holds a run of another command "
                              f"({' '.join(view.run.get('command', []))}): give this run its own --run-dir")
        self._close_orphans(view)
        if self.world is not None:
            self.world.adopt_missed(self.journal)
        plan = reached_plan(fold(self.journal.records)).merged(cfg.initial)
        return NextAttempt(plan, "resume", "continues on the plan the earlier run reached")

    def _close_orphans(self, view: RunView) -> None:
        """An attempt the journal never saw end: its supervisor died. Take in what its worker left."""
        for attempt in view.attempts:
            if attempt.status != "running":
                continue
            files = AttemptFiles(attempt_dir(self.config.run_dir, attempt.number, self.topology))
            died = self.journal.records[-1]["ts"]  # about when: the supervisor journaled at every poll until then
            self.watcher.take_in(attempt.number, files)
            checkpoint = self.watcher.journal_checkpoint(attempt.number, files)
            if self.world is not None:
                self.world.orphan_ended(self.journal, attempt.number, died, checkpoint)
            self.journal.append(schema.ATTEMPT_ENDED, attempt=attempt.number, outcome="interrupted", exit_code=None,
                                failure=Failure(Kind.INTERRUPTED, None, "the supervisor died during this "
                                                "attempt").to_dict())

    def _agree_on_start(self, number: int) -> int | None:
        """None: every node starts attempt `number` on the same plan; otherwise the run's exit code."""
        ending = self.world.agree_on_start(self.journal, number)
        if ending is None:
            return None
        code = ending.exit_code
        if code is None:
            code = {RunStatus.NODE_LOST.value: EXIT_NOT_MEMORY, RunStatus.NODES_DISAGREE.value: EXIT_USAGE}.get(
                ending.status, EXIT_INTERRUPTED.get(self._signal, 130))
        return self._end(End(ending.status, code, ending.reason))


class _forwarded_signals:
    """SIGINT/SIGTERM ask the runner to stop the worker group gracefully instead of killing oomladder."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, lambda signum, frame: self.runner.request_stop(signum))

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
