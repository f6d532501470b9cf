"""Watching one attempt: launch its worker group, poll it, take in what the workers report, stop it
when the run must stop (a signal, a budget, a hang, another node), and journal how it ended.

`AttemptWatcher.watch` returns an `AttemptResult` and writes `attempt_ended` before it returns;
what the run does next is decide.py's. Clock, sleep and launcher are the runner's, so the tests
that drive the runner with fake workers drive this too. It is longer than most modules: one
attempt's whole life, from its launch to its journaled end, reads in one place."""

from __future__ import annotations

import inspect
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oomladder.classify import Evidence, Failure, Kind, classify
from oomladder.nodes import agreement
from oomladder.nodes.world import World
from oomladder.plan import Plan
from oomladder.process import cgroup, gpu, workers
from oomladder.process.checkpoints import Resume, remove_superseded
from oomladder.process.launch import worker_env
from oomladder.process.rundir import run_key
from oomladder.process.workers import Launcher, LaunchError, LaunchSpec, WorkerHandle, read_tail, stop_descendants
from oomladder.record import schema
from oomladder.record.journal import Journal
from oomladder.record.records import InPlaceRecord
from oomladder.run.budget import Budget
from oomladder.run.config import EXIT_BUDGET, EXIT_INTERRUPTED, RunConfig
from oomladder.run.intake import Intake
from oomladder.run.outcomes import AttemptResult, Stop, StopReason
from oomladder.run.trainers import died_below_a_wrapper
from oomladder.status import AttemptOutcome, RunStatus
from oomladder.views.display import Display
from oomladder.worker.protocol.files import AttemptFiles

# A peer node failed: this node's ranks have no step to finish (their collective is broken), so a short grace.
PEER_GRACE = 10.0
PEER_LOOK_INTERVAL = 1.0  # seconds between looks at the peers' journals during an attempt
REDRAW_INTERVAL = 0.5     # the live table redraws twice a second at most
ADAPTER_GRACE = 10.0      # seconds for a worker's Python to start and load the adapter


@dataclass(frozen=True)
class Launch:
    """One attempt as the loop starts it."""

    number: int
    attempt_dir: Path
    argv: list[str]
    overrides: Plan
    plan: Plan
    resume: Resume | None
    evaluate_at: int | None
    rung: str | None = None          # what the ladder chose, and why: the worker tells the program's tracker
    reason: str = ""
    checkpoint_in_place: bool = True  # the ladder's checkpointing rung may be taken in place (worker/recovery/)


@dataclass
class _Poll:  # how the poll loop ended

    returncode: int
    stop: StopReason | None = None
    hung: float | None = None       # seconds without activity, when the hang timeout stopped it


class AttemptWatcher:
    def __init__(self, config: RunConfig, journal: Journal, *, launcher: Launcher, clock: Callable[[], float],
                 monotonic: Callable[[], float], sleep: Callable[[float], None], display: Display,
                 environ: dict[str, str], world: World | None, signalled: Callable[[], int | None],
                 hurry: Callable[[], bool], wall_time_spent: Callable[[], Budget | None],
                 recovered: Callable[[int, InPlaceRecord], None] = lambda attempt, record: None) -> None:
        self.config, self.journal, self.launcher = config, journal, launcher
        self.clock, self.monotonic, self.sleep, self.display = clock, monotonic, sleep, display
        self.environ, self.world = environ, world
        self.allocator_shim: Path | None = None  # --cpu-cap allocator, once built (RunLoop.journal_run_started)
        self.signalled, self.hurry, self.wall_time_spent, self.recovered = signalled, hurry, wall_time_spent, recovered
        self.running: WorkerHandle | None = None     # the group being watched, for the loop to stop on a crash
        self.intake = Intake(config, journal, display, recovered)
        # Where attempt cgroups can be made (or why not): the real launcher's; a fake one's tests have no processes.
        real = inspect.unwrap(launcher) is workers.spawn  # the console's echo wraps it
        self._cgroups: tuple[Path | None, str | None] | None = None if real else (None, None)

    # --- one attempt ----------------------------------------------------------------------------------

    def watch(self, launch: Launch) -> AttemptResult:
        cfg = self.config
        env = worker_env(self.environ, launch.attempt_dir, launch.overrides, launch.plan, cfg.memory_cap,
                         launch.resume.path if launch.resume else None, launch.evaluate_at, run_dir=cfg.run_dir,
                         no_offload=cfg.no_offload, rung=launch.rung, reason=launch.reason,
                         in_place=cfg.in_place, in_place_checkpointing=launch.checkpoint_in_place,
                         split_ahead=cfg.split_ahead, allocator_shim=self.allocator_shim)
        group = self._attempt_group(launch.number)
        spec = LaunchSpec(tuple(launch.argv), env, cfg.cwd, launch.attempt_dir / "stdout.log",
                          launch.attempt_dir / "stderr.log", group.procs_file if group else None)
        oom_kills_before, gpu_before = cgroup.oom_kill_count(), gpu.gpu_pids()
        since = self.monotonic()
        files = AttemptFiles(launch.attempt_dir)
        try:
            handle = self.launcher(spec)
        except LaunchError as exc:
            if group is not None:
                group.kill()
            ended = {"attempt": launch.number, "exit_code": None, "duration": 0.0}
            failure = Failure(Kind.LAUNCH_FAILED, None, str(exc))
            return self._journal_end(launch.number, AttemptOutcome.FAILED, failure, None, ended, None, None, 0.0)
        # Where a later resume finds what a killed supervisor left: the worker's session, and its cgroup.
        self.journal.append(schema.LAUNCHED, attempt=launch.number, pid=handle.pid,
                            **({"cgroup": str(group.path)} if group else {}))
        self.running = handle  # left set if the poll raises: the loop's crash handler stops the group
        poll = self._poll(handle, launch.number, spec, files, since)
        self.running = None
        exited = self.clock()
        duration = self.monotonic() - since
        handle.reap_group()
        stop_descendants()  # what left the group (daemons that setsid'd, a wrapper's orphaned python)
        if group is not None:
            group.kill()  # what left even the process tree: the kernel counts every process of the attempt
        if gpu.wait_released(gpu_before) == "still held":
            self.journal.append(schema.WARNING, attempt=launch.number, text="GPU memory of the stopped worker was "
                                "still held after 30 s; the next attempt may fail on it")
        self.take_in(launch.number, files, drain=True)  # all it wrote, however fast: the rest of a flood too
        return self._conclude(launch.number, spec, files, poll, duration, exited, oom_kills_before)

    def _attempt_group(self, number: int) -> cgroup.AttemptGroup | None:
        """A cgroup of its own for the attempt, where the machine allows one; where it does not, the run says so
        once (a fake launcher's tests have no processes to keep)."""
        if self._cgroups is None:
            off = self.environ.get("OOMLADDER_CGROUPS") == "0"
            self._cgroups = (None, "turned off with OOMLADDER_CGROUPS=0") if off else cgroup.attempt_root()
        base, why = self._cgroups
        group = cgroup.AttemptGroup.make(base, run_key(self.config.run_dir), number) if base is not None else None
        said = any(w.about == "cgroup" for w in self.journal.view().warnings)
        if group is None and why is not None and not said:
            text = (f"attempts run without a cgroup of their own here ({why or 'the kernel refused one'}): a process "
                    f"that leaves its worker's session and clears its environment can outlive a supervisor killed "
                    f"with kill -9")
            self.journal.append(schema.WARNING, attempt=None, about="cgroup", text=text)
            self.display.event(f"warning: {text}")
        return group

    def _poll(self, handle: WorkerHandle, number: int, spec: LaunchSpec, files: AttemptFiles,
              started: float) -> _Poll:
        """Poll until the group ends on its own or the supervisor stops it (intervals on the monotonic clock:
        a clock step must not fire a hang or a budget)."""
        cfg = self.config
        last_activity, activity, shown, peeked = started, None, 0.0, started
        while (returncode := handle.poll()) is None:
            stop = self._stop_now()
            if stop is None and self.world is not None and self.monotonic() - peeked >= PEER_LOOK_INTERVAL:
                peeked = self.monotonic()
                if (failed := self.world.peer_failed(number)) is not None:
                    self.journal.append(schema.INTERRUPT, attempt=number, reason="peer", detail=f"node {failed} failed")
                    return _Poll(handle.stop(signal.SIGTERM, min(cfg.grace, PEER_GRACE), hurry=self.hurry))
            if stop is not None:
                self.journal.append(schema.INTERRUPT, attempt=number, reason=stop.kind.value, detail=stop.detail)
                if stop.kind is Stop.SIGNAL and not self.hurry():
                    # Said from the loop, not the signal handler (which must not print inside a live redraw). Two
                    # quick presses can arrive as one: the person learns that another still stops it at once.
                    self.display.event(f"{signal.Signals(stop.signum or signal.SIGTERM).name}: stopping attempt "
                                       f"{number}; its step in flight is saved first (up to {cfg.grace:g} s). "
                                       f"Ctrl-C again, or a second signal, stops it at once")
                return _Poll(handle.stop(stop.signal_to_send, cfg.grace, hurry=self.hurry), stop=stop)
            self.take_in(number, files)
            # Activity is any new record or output; totals, so a steady one record per poll counts too.
            now_activity = (self.journal.count, _size(spec.stdout), _size(spec.stderr))
            if now_activity != activity:
                activity, last_activity = now_activity, self.monotonic()
            elif cfg.hang_timeout and self.monotonic() - last_activity > cfg.hang_timeout:
                hung = self.monotonic() - last_activity
                self.journal.append(schema.INTERRUPT, attempt=number, reason="hang", detail=f"{hung:.0f}s without "
                                    f"progress")
                return _Poll(handle.stop(signal.SIGTERM, cfg.grace, hurry=self.hurry), hung=hung)
            if self.monotonic() - started > ADAPTER_GRACE:
                self.intake.warn_if_no_adapter(number)
            if self.display.live and self.monotonic() - shown >= REDRAW_INTERVAL:
                self.display.update(self.journal.view())
                shown = self.monotonic()
            self.sleep(cfg.poll_interval)
        return _Poll(returncode)

    def _stop_now(self) -> StopReason | None:
        """A reason to stop the group at once: oomladder was signalled, or the wall-time budget is spent."""
        signum = self.signalled()
        if signum is not None:
            return StopReason(Stop.SIGNAL, signum=signum)
        spent = self.wall_time_spent()
        return StopReason(Stop.BUDGET, budget=spent) if spent is not None else None

    def conclude(self, number: int, files: AttemptFiles, returncode: int, duration: float) -> AttemptResult:
        """How an attempt that ran inside this very process ended (a notebook's kernel: oomladder/notebook)."""
        return self._conclude(number, LaunchSpec((), {}, ".", Path(os.devnull), Path(os.devnull)), files,
                              _Poll(returncode), duration, self.clock(), None)

    def _conclude(self, number: int, spec: LaunchSpec, files: AttemptFiles, poll: _Poll, duration: float,
                  exited: float, oom_kills_before: int | None) -> AttemptResult:
        """Classify the end of the attempt and journal it."""
        self.intake.warn_if_no_adapter(number)
        view = self.journal.view()
        attempt = view.attempts[-1]
        ended: dict[str, Any] = dict(attempt=number, exit_code=poll.returncode, duration=round(duration, 3),
                                     exited=round(exited, 3), step=attempt.step, max_steps=attempt.max_steps)
        record = files.first_failure()
        if poll.returncode == 0 and poll.stop is None and not died_below_a_wrapper(record, files.claims()):
            return self._journal_end(number, AttemptOutcome.FINISHED, None, None, ended, None, None, duration)
        if record and ended["max_steps"] is None:
            ended["max_steps"] = record.get("max_steps")
        if poll.hung is not None:
            failure = Failure(Kind.HANG, None, f"no progress for {poll.hung:.0f} s (--hang-timeout "
                              f"{self.config.hang_timeout:g})", step=attempt.step)
        else:
            facts = view.facts
            oom_kills_after = cgroup.oom_kill_count()
            failure = classify(Evidence(
                returncode=poll.returncode, record=record, stderr_tail=read_tail(spec.stderr),
                capped=bool(self.config.memory_cap) and facts.device in (None, "cpu"),
                cgroup_oom_kill=(oom_kills_before is not None and oom_kills_after is not None
                                 and oom_kills_after > oom_kills_before)))
        checkpoint = self.journal_checkpoint(number, files)
        if record and record.get("peak") is not None:
            ended.update(peak=record["peak"], peak_measure=record.get("peak_measure"))
        if record and record.get("batch_shape"):
            ended["batch_shape"] = record["batch_shape"]
        outcome = (AttemptOutcome.INTERRUPTED if poll.stop is not None or failure.kind is Kind.INTERRUPTED
                   else AttemptOutcome.FAILED)
        return self._journal_end(number, outcome, failure, poll.stop, ended, record, checkpoint, duration)

    def _journal_end(self, number: int, outcome: AttemptOutcome, failure: Failure | None, stop: StopReason | None,
                     ended: dict[str, Any], record: dict[str, Any] | None, checkpoint: dict[str, Any] | None,
                     duration: float) -> AttemptResult:
        """Journal the attempt's end; on several nodes, the world's end once every node has told its own."""
        if self.world is not None:
            outcome, failure, ended, stop = self._world_end(self.world, number, outcome, failure, stop, ended, record,
                                                            checkpoint)
        self.journal.append(schema.ATTEMPT_ENDED, outcome=outcome,
                            **({"failure": failure.to_dict()} if failure else {}), **ended)
        return AttemptResult(number, ended.get("exit_code"), failure, stop, duration)

    # --- what the workers left (intake.py) ------------------------------------------------------------

    def take_in(self, number: int, files: AttemptFiles, drain: bool = False) -> None:
        self.intake.take_in(number, files, drain)

    def journal_checkpoint(self, number: int, files: AttemptFiles) -> dict[str, Any] | None:
        return self.intake.journal_checkpoint(number, files)

    # --- several nodes (oomladder/nodes): the runner's side, kept apart from the single-node path ---------

    def _world_end(self, world: World, number: int, outcome: AttemptOutcome, failure: Failure | None,
                   stop: StopReason | None, ended: dict[str, Any], record: dict[str, Any] | None,
                   checkpoint: dict[str, Any] | None,
                   ) -> tuple[AttemptOutcome, Failure | None, dict[str, Any], StopReason | None]:
        """This node's end in, the world's end out: the same on every node, for the usual decision."""
        failed_at = None
        if failure is not None:  # when this node's first failure happened: its rank's record, or the stop it began
            interrupt = agreement.of_attempt(self.journal.records, schema.INTERRUPT, number)
            times = [t for t in ((record or {}).get("ts"), interrupt["ts"] if interrupt else None) if t is not None]
            failed_at = min(times) if times else ended.get("exited") or self.clock()
        if ended.get("peak") is None and (attempt := self.journal.view().attempts[-1]).peak is not None:
            ended = {**ended, "peak": attempt.peak, "peak_measure": attempt.peak_measure}  # this node's ranks' highest
        end = world.end(self.journal, number, outcome, failure, ended, failed_at, checkpoint, _told_stop(stop))
        if end.adopted:
            remove_superseded(self.config.run_dir, self.journal.view().checkpoints, keep=end.adopted[-1])
        if stop is None and (signum := self.signalled()) is not None:
            stop = StopReason(Stop.SIGNAL, signum=signum)  # stopped while waiting for the other nodes
        elif stop is None and end.peer_stop is not None:
            stop = StopReason(Stop.PEER, peer=end.peer_stop)
        return end.outcome, end.failure, end.ended, stop


def _told_stop(stop: StopReason | None) -> dict[str, Any] | None:
    """How this node's own stop reads to the other nodes: what stopped it, and the status and code to end with."""
    if stop is None or stop.kind is Stop.PEER:
        return None
    if stop.kind is Stop.SIGNAL and stop.signum is not None:
        return {"why": signal.Signals(stop.signum).name, "status": RunStatus.INTERRUPTED,
                "exit_code": EXIT_INTERRUPTED.get(stop.signum, 130)}
    flag = stop.budget.flag if stop.budget is not None else "?"
    return {"why": f"the {flag} budget ran out", "status": RunStatus.BUDGET_EXHAUSTED, "exit_code": EXIT_BUDGET}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
