"""The run loop: start an attempt, let the watcher see it through (watch.py), ask the pure `decide` (decide.py) what
comes next, and journal each step before acting on it. It only journals, sleeps and launches; clock, sleep, launcher
and display are parameters, so the policy is tested without processes and the same loop runs real workers."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from oomladder import __version__
from oomladder.memory.foresight import load_warning
from oomladder.nodes import agreement
from oomladder.nodes.topology import Topology, attempt_dir, journal_path
from oomladder.nodes.world import World
from oomladder.process import allocator
from oomladder.process.checkpoints import latest, remove_partial, remove_superseded
from oomladder.process.launch import substitute
from oomladder.process.rundir import RunLock, make_run_dir
from oomladder.process.workers import Launcher, become_subreaper, spawn, stop_descendants
from oomladder.record import schema
from oomladder.record.journal import Journal, iter_journal, open_journal
from oomladder.run.budget import Budget, BudgetKind, BudgetState, budgets, exhausted
from oomladder.run.config import EXIT_DISK_FULL, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_NOT_MEMORY, EXIT_USAGE, RunConfig
from oomladder.run.decide import cap_warning, decide, evaluation_owed, over_budget, stopped
from oomladder.run.decisions import journal_decision
from oomladder.run.notify import Notifier, journaled
from oomladder.run.outcomes import AttemptResult, End, Next, NextAttempt, Retry, Stop, StopReason
from oomladder.run.resume import starting_point
from oomladder.run.signals import forwarded_signals
from oomladder.run.watch import AttemptWatcher, Launch
from oomladder.status import RunStatus
from oomladder.views.display import Display, NullDisplay, Unbreakable
from oomladder.views.report import write_reports


class Runner:
    """What a run is given (its configuration, clock, sleep, launcher, display and environment) and how it is asked
    to stop. `run` opens the run directory and its journal and hands them to a `RunLoop`, which holds them for the
    run's whole life (so nothing of an open run is ever missing)."""

    def __init__(self, config: RunConfig, *, launcher: Launcher = spawn, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, display: Display | None = None,
                 environ: dict[str, str] | None = None, monotonic: Callable[[], float] | None = None) -> None:
        # Workers run in the command's own folder: every path handed to them must be absolute.
        self.config = config = dataclasses.replace(config, run_dir=config.run_dir.resolve())
        self.launcher, self.clock, self.sleep = launcher, clock, sleep
        # Intervals (hang, budgets) on a clock that a step of the wall clock cannot move; a test's fake clock
        # is both.
        self.monotonic = monotonic or (time.monotonic if clock is time.time else clock)
        self.display = Unbreakable(display or NullDisplay())
        self.environ = dict(os.environ if environ is None else environ)
        self.stops = StopRequests()
        self.topology = Topology(config.nnodes, config.node_rank)
        self.world = World(config.run_dir, self.topology, config.node_timeout, config.poll_interval, clock, sleep,
                           lambda: self.stops.signum is not None) if self.topology.multi else None

    def run(self) -> int:
        cfg = self.config
        make_run_dir(cfg.run_dir)
        own = journal_path(cfg.run_dir, cfg.node_rank)
        # Before anything is written: bad input leaves the run directory as it was.
        started = [r for r in iter_journal(own) if r["type"] == schema.RUN_STARTED] if own.exists() else []
        agreement.check_node_count([started] + (self.world.journals() if self.world else []), cfg.nnodes,
                                   cfg.run_dir)
        with RunLock(cfg.run_dir, cfg.node_rank) as lock:
            become_subreaper()
            loop = RunLoop(self, open_journal(own, self.clock))
            with forwarded_signals(self.request_stop):  # from resume's sweep on: a signal ends the run as any other
                try:
                    first = starting_point(cfg, loop.journal, loop.watcher, self.world, self.topology,
                                           hurry=self.stops.hurry)
                except BaseException:
                    loop.journal.close()  # refused before starting: the directory stays exactly as it was
                    lock.discard()
                    raise
                try:
                    loop.journal_run_started()
                    return loop.run(first)
                except BaseException as exc:
                    return loop.crashed(exc)
                finally:
                    loop.wind_up()

    def request_stop(self, signum: int) -> None:
        """A first signal stops the worker group gracefully (its step in flight is saved); a second, at once."""
        self.stops.request(signum)


class StopRequests:
    """The signals oomladder got while a run was under way, set from the signal handler and read by the loop."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal: the run ends as it says (SIGINT: exit 130)
        self.count = 0  # a second signal stops the worker group at once, without its grace period
        self.woken = threading.Event()  # cuts a retry's backoff short

    def request(self, signum: int) -> None:
        self.count += 1
        self.signum = self.signum or signum
        self.woken.set()

    def hurry(self) -> bool:
        return self.count > 1


class RunLoop:
    """One open run: its journal, the watcher of its attempts and its notifier, with the runner's parameters."""

    def __init__(self, runner: Runner, journal: Journal, *, watcher: AttemptWatcher | None = None,
                 notifier: Notifier | None = None) -> None:
        self.config = cfg = runner.config
        self.launcher, self.clock, self.sleep, self.monotonic = (runner.launcher, runner.clock, runner.sleep,
                                                                 runner.monotonic)
        self.display, self.environ, self.stops = runner.display, runner.environ, runner.stops
        self.topology, self.world = runner.topology, runner.world
        self.journal = journal
        self.notifier = notifier or Notifier.of(cfg, journal, self.display)
        self.watcher = watcher or AttemptWatcher(
            cfg, journal, launcher=self.launcher, clock=self.clock, monotonic=self.monotonic, sleep=self.sleep,
            display=self.display, environ=self.environ, world=self.world, signalled=lambda: self.stops.signum,
            hurry=self.stops.hurry, wall_time_spent=self._wall_time_spent,
            recovered=lambda n, rec: self.notifier.in_place(journal.view(), n, rec))
        self._budgets = budgets(cfg.max_attempts, cfg.max_wall_time)
        self._started = self.monotonic()
        self._attempts_this_run = 0

    def crashed(self, exc: BaseException) -> int:
        """An error in oomladder itself while a run was under way: the worker group is stopped (gracefully
        first), the journal says what it can, and a full disk is named as such, without a traceback."""
        if self.watcher.running is not None:
            self.watcher.running.stop(signal.SIGTERM, self.config.grace, hurry=self.stops.hurry)
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        status, code = (RunStatus.DISK_FULL, EXIT_DISK_FULL) if full else (RunStatus.INTERNAL_ERROR, EXIT_INTERNAL)
        where = exc.filename if isinstance(exc, OSError) and exc.filename else self.config.run_dir
        reason = (f"the disk holding {where} is full: free some space, then run the "
                  f"same command again (or oomladder resume) to continue" if full else
                  f"oomladder failed: {type(exc).__name__}: {exc}")
        try:
            self.journal.append(schema.RUN_ENDED, status=status, exit_code=code, reason=reason)
        except OSError:
            pass  # the disk may be the reason: the worker is stopped, and resume takes in what it left
        if not full:
            raise exc
        self.display.event(f"disk full: {reason}")
        return code

    def wind_up(self) -> None:
        """Nothing of the run left running; the report written if the disk lets it."""
        cfg, journal = self.config, self.journal
        stop_descendants()
        remove_partial(cfg.run_dir)
        view = journal.view()
        if cfg.node_rank == 0:  # node 0's journal holds the world's run; other nodes' reports would collide
            try:
                write_reports(cfg.run_dir, view)
            except OSError as exc:
                self.display.event(f"the report could not be written ({exc.strerror or exc}): the journal has "
                                   f"the run; `oomladder report {cfg.run_dir}` shows it once there is room")
            self.notifier.ended(view, cfg.run_dir / "report.html")
        self.display.close(view)
        try:
            journal.close()
        except OSError:
            pass

    # --- the loop -------------------------------------------------------------------------------------

    def run(self, nxt: NextAttempt) -> int:
        self._started = self.monotonic()
        self._attempts_this_run = 0
        self._observe_environment()
        while True:
            if self.stops.signum is not None:  # before any launch: a signal in the backoff stops here
                return self._end(stopped(StopReason(Stop.SIGNAL, signum=self.stops.signum)))
            launch = self._start_attempt(nxt)
            if self.world is not None and (code := self._agree_on_start(self.world, launch.number)) is not None:
                return code
            self.display.event(f"attempt {launch.number}: {nxt.rung or 'start'}"
                               + (f" ({nxt.reason})" if nxt.reason else "")
                               + f"; log: {launch.attempt_dir / 'stderr.log'}")
            result = self.watcher.watch(launch)
            verdict = decide(self.journal.view(), result, self.config.ladder, memory_cap=self.config.memory_cap,
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
        view = self.journal.view()
        plan = view.program_plan.merged(nxt.overrides)
        folder = attempt_dir(cfg.run_dir, number, self.topology)
        if folder.is_dir() and any(folder.iterdir()):
            # Left by a run whose journal is gone: an attempt never reads files it did not write.
            folder.rename(folder.with_name(f"{folder.name}.stale-{int(self.clock())}"))
        folder.mkdir(parents=True, exist_ok=True)
        argv = substitute(cfg.command, plan)
        first_start = next(r["ts"] for r in records if r["type"] == schema.RUN_STARTED)
        output_dir = Path(cfg.cwd, view.facts.output_dir) if view.facts.output_dir else None
        resume = latest(view.checkpoints, output_dir, since=first_start)
        self.journal.append(schema.ATTEMPT_STARTED, attempt=number, rung=nxt.rung, reason=nxt.reason,
                            plan=nxt.overrides.to_dict(), command=argv, attempt_dir=str(folder),
                            resume_from=resume.to_dict() if resume else None)
        if (warning := load_warning(view, cfg.memory_cap, plan)) is not None:
            self.journal.append(schema.WARNING, attempt=number, about="mapping", text=warning)
            self.display.event(f"attempt {number}: {warning}")
        checkpointing = any(r.name == "gradient_checkpointing" and r.index not in view.incompatible
                            for r in cfg.ladder.rungs)
        owed = evaluation_owed(view, resume.step if resume else None)
        return Launch(number, folder, argv, nxt.overrides, plan, resume, owed, nxt.rung, nxt.reason, checkpointing)

    def _act(self, result: AttemptResult, verdict: Next) -> int | NextAttempt:
        """Journal what `decide` chose and carry it out: the run's exit code, or the next attempt."""
        number = result.number
        if isinstance(verdict, End):
            if verdict.decision is not None:
                journal_decision(self.journal, number, verdict.decision, verdict.rollback, self.display,
                                 self.config.memory_cap)
            if verdict.status is RunStatus.FINISHED:
                remove_superseded(self.config.run_dir, self.journal.view().checkpoints, keep=None)
            return self._end(verdict)
        if isinstance(verdict, Retry):
            self.journal.append(schema.DECISION, attempt=number, rung="retry", rung_index=None, reason=verdict.reason,
                                plan=verdict.plan.to_dict(), changes="-", skipped=[])
            self.display.event(f"attempt {number}: {verdict.reason}")
            self._sleep_unless_signalled(verdict.delay)
            nxt = NextAttempt(verdict.plan, "retry", verdict.reason)
        else:
            changes = journal_decision(self.journal, number, verdict.decision, verdict.rollback, self.display,
                                       self.config.memory_cap)
            failed = result.failure.summary if result.failure is not None else "it ended"
            self.display.event(f"attempt {number}: {failed}; next: {verdict.decision.rung}: {changes}"
                               + (f" (rolled back: {verdict.rollback.what_broke})" if verdict.rollback else ""))
            nxt = NextAttempt(verdict.plan, verdict.decision.rung, verdict.decision.reason)
        ending = over_budget(exhausted(self._budgets, self._budget_state()), nxt.rung)
        if ending is not None:
            return self._end(ending)
        if not isinstance(verdict, Retry):  # a fallback that will run: news
            self.notifier.fallback(self.journal.view(), number)
        return nxt

    def _end(self, end: End) -> int:
        self.journal.append(schema.RUN_ENDED, status=end.status, exit_code=end.exit_code, reason=end.reason)
        self.display.event(f"{end.status.value.replace('_', ' ')}: {end.reason}")
        return end.exit_code

    # --- budgets --------------------------------------------------------------------------------------

    def _budget_state(self) -> BudgetState:
        return BudgetState(self._attempts_this_run, self.monotonic() - self._started)

    def _sleep_unless_signalled(self, seconds: float) -> None:
        """The backoff before a retry, cut short by a signal (acted on before the next launch)."""
        if self.stops.signum is not None:
            return
        if self.sleep is time.sleep:
            self.stops.woken.wait(seconds)  # set by request_stop, from the signal handler
        else:
            self.sleep(seconds)

    def _wall_time_spent(self) -> Budget | None:
        spent = exhausted(self._budgets, self._budget_state())
        return spent if spent is not None and spent.kind is BudgetKind.WALL_TIME else None

    # --- the start of a run ---------------------------------------------------------------------------

    def journal_run_started(self) -> None:
        cfg = self.config
        self.journal.append(schema.RUN_STARTED, command=list(cfg.command), ladder=cfg.ladder.to_dict(),
                            memory_cap=cfg.memory_cap, max_attempts=cfg.max_attempts, cwd=cfg.cwd,
                            max_wall_time=cfg.max_wall_time, hang_timeout=cfg.hang_timeout,
                            version=__version__, initial=cfg.initial.set_fields(), no_offload=cfg.no_offload,
                            **({} if cfg.in_place else {"in_place": False}),
                            **({} if cfg.split_ahead else {"split_ahead": False}),
                            cpu_cap=cfg.cpu_cap,
                            **journaled(cfg.notify, cfg.notify_config),  # names and a path, never a URL
                            **({"nnodes": cfg.nnodes, "node_rank": cfg.node_rank, "node_timeout": cfg.node_timeout}
                               if self.topology.multi else {}))
        if self.world is not None:
            self.world.since = self.journal.records[-1]["ts"]
        if (text := cap_warning(cfg.memory_cap)) is not None:
            self.journal.append(schema.WARNING, attempt=None, about="memory_cap", text=text)
            self.display.event(f"warning: {text}")
        if cfg.memory_cap:  # slower, never wrong: where the shim cannot be used, the address-space cap fails as well
            self.watcher.allocator_shim, text = allocator.choose(cfg.cpu_cap, self.environ)
            if text is not None:
                self.journal.append(schema.WARNING, attempt=None, about="cpu_cap", text=text)
                self.display.event(f"warning: {text}")

    def _observe_environment(self) -> None:
        """The allocator setting the program would run with on its own: the first plan's, once per run."""
        if not any(r["type"] == schema.OBSERVED for r in self.journal.records):
            allocator = self.environ.get("PYTORCH_ALLOC_CONF", self.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""))
            self.journal.append(schema.OBSERVED, attempt=0, source="environment", plan={"allocator": allocator},
                                facts={})

    def _agree_on_start(self, world: World, number: int) -> int | None:
        """None: every node starts attempt `number` on the same plan; otherwise the run's exit code."""
        ending = world.agree_on_start(self.journal, number)
        if ending is None:
            return None
        code = ending.exit_code
        if code is None:
            code = {RunStatus.NODE_LOST: EXIT_NOT_MEMORY, RunStatus.NODES_DISAGREE: EXIT_USAGE}.get(
                ending.status, EXIT_INTERRUPTED.get(self.stops.signum or 0, 130))
        return self._end(End(ending.status, code, ending.reason))
