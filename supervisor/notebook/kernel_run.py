"""A run whose worker is the kernel it lives in: the runner's own journaling, deciding and reporting, with cells
where a supervised run has a launch and a poll.

`KernelRunner` is the `Runner` (run/loop.py) with its loop taken apart: `begin` journals the run's start and the
first attempt and puts the attempt's plan where the adapter reads it (this process's environment, as a worker
gets it from its supervisor), then installs the adapter here. After each cell, `after_cell` takes in what the
adapter wrote, as the watcher does between polls. A cell that died of an OOM ends the attempt as a worker's death
ends one: classified from the same failure record, decided on by the same `decide`, and the next attempt begins
in the same kernel, on the new plan, resuming from the emergency checkpoint when the user runs the cells again.
Nothing of the kernel is ever stopped or killed: it is the user's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oomladder.nodes.topology import journal_path
from oomladder.process.launch import worker_env
from oomladder.process.rundir import make_run_dir
from oomladder.record import schema
from oomladder.record.history import RunView
from oomladder.record.journal import Journal, open_journal
from oomladder.run.config import RunConfig
from oomladder.run.decide import decide
from oomladder.run.loop import RunLoop, Runner
from oomladder.run.notify import Notifier
from oomladder.run.outcomes import End, NextAttempt
from oomladder.run.resume import starting_point
from oomladder.run.watch import AttemptWatcher, Launch
from oomladder.views.display import ProgramLine
from oomladder.views.report import write_reports
from oomladder.worker import adapter
from oomladder.worker.protocol import files as worker_files
from oomladder.worker.protocol.files import AttemptFiles

COMMAND = ("%load_ext", "oomladder")  # what the journal and the report name as the run's command
# Set by the adapter for the processes this kernel starts (worker/protocol/role.py): not the attempt's, kept across
# attempts.
_ROLE_VARIABLES = {"OOMLADDER_OWNER_PID", "OOMLADDER_PYTHON_ANCESTORS", "OOMLADDER_LAUNCHER_PID"}


class CellDisplay:
    """The runner's events, in the output of the cell that caused them."""

    live = shows_output = verbose = False  # its events alone: the program's output is already the cell's

    def __init__(self, show: Callable[[Any], None]) -> None:
        self.show = show

    def update(self, view: RunView) -> None:
        pass

    def event(self, text: str) -> None:
        self.show(f"oomladder: {text}")

    def output(self, lines: list[ProgramLine], pending: ProgramLine | None) -> None:
        pass

    def detail(self, text: str) -> None:
        pass

    def close(self, view: RunView) -> None:
        pass


class KernelRunner(RunLoop):
    """`begin` makes one: the run's start (or, after a kernel restart, its continuation in the same run directory)
    and its first attempt in this kernel; then the adapter, here."""

    def __init__(self, runner: Runner, journal: Journal, show: Callable[[Any], None]) -> None:
        cfg = runner.config
        super().__init__(runner, journal, notifier=Notifier((), journal, runner.display, cfg.run_dir),
                         watcher=AttemptWatcher(cfg, journal, launcher=_never, clock=runner.clock,
                                                monotonic=runner.monotonic, sleep=runner.sleep,
                                                display=runner.display, environ=runner.environ, world=None,
                                                signalled=lambda: None, hurry=lambda: False,
                                                wall_time_spent=lambda: None))
        self.show = show
        self.ended: End | int | None = None
        first = starting_point(cfg, journal, self.watcher, None, self.topology, hurry=lambda: False)
        self.journal_run_started()
        self._started = self.monotonic()
        self._observe_environment()
        if os.environ.get("JPY_SESSION_NAME"):  # the notebook's path, where Jupyter's server says it
            journal.append(schema.OBSERVED, attempt=0, source="environment", plan={},
                           facts={"notebook": os.environ["JPY_SESSION_NAME"]})
        self.launch, self.files, self.since = self._enter(first)

    @classmethod
    def begin(cls, config: RunConfig, show: Callable[[Any], None]) -> KernelRunner:
        runner = Runner(config, display=CellDisplay(show), sleep=lambda seconds: None,
                        environ={k: v for k, v in os.environ.items() if not k.startswith("OOMLADDER_")})
        make_run_dir(runner.config.run_dir)
        kernel = cls(runner, open_journal(journal_path(runner.config.run_dir, 0), runner.clock), show)
        adapter.install()
        worker_files.append_progress({"adapter": _version()})
        return kernel

    def after_cell(self, error: BaseException | None) -> None:
        """Take in what the cell's training wrote; an OOM it died of ends the attempt and decides the next."""
        if self.ended is not None:
            return
        number = self.launch.number
        self.watcher.take_in(number, self.files)
        record = self.files.first_failure()
        if error is not None and record is not None and not _is_memory(record, self.config.memory_cap):
            for stale in self.launch.attempt_dir.glob(f"{worker_files.FAILURE}.*.json"):
                stale.unlink(missing_ok=True)  # the user's own error, fixed in the cell: not the attempt's end
            record = None
        attempt = self.journal.view().attempts[-1]
        finished = error is None and attempt.max_steps is not None and attempt.step == attempt.max_steps
        if record is not None or finished:
            self._end_attempt(number, 0 if finished else 1)
        write_reports(self.config.run_dir, self.journal.view())

    def _end_attempt(self, number: int, returncode: int) -> None:
        result = self.watcher.conclude(number, self.files, returncode, self.monotonic() - self.since)
        verdict = decide(self.journal.view(), result, self.config.ladder, memory_cap=self.config.memory_cap,
                         several_nodes=False, backoff=self.config.backoff, log=Path("the cell's output"))
        before = self.journal.view().attempts[-1].plan
        step = self._act(result, verdict)
        if isinstance(step, int):
            self.ended = step
            return
        self.launch, self.files, self.since = self._enter(step)
        from oomladder.notebook.show import next_plan  # rich, only when there is a plan to show
        self.show(next_plan(before, self.launch.plan, result.failure.summary if result.failure else "it ended",
                            step.rung or "retry", self.launch.resume.step if self.launch.resume else None))

    def _enter(self, nxt: NextAttempt) -> tuple[Launch, AttemptFiles, float]:
        """Journal the next attempt and give this process its plan, as a worker's environment gives it."""
        cfg = self.config
        launch = self._start_attempt(nxt)
        env = worker_env(self.environ, launch.attempt_dir, launch.overrides, launch.plan, cfg.memory_cap,
                         launch.resume.path if launch.resume else None, launch.evaluate_at, run_dir=cfg.run_dir,
                         no_offload=cfg.no_offload, rung=launch.rung, reason=launch.reason, in_place=cfg.in_place,
                         in_place_checkpointing=launch.checkpoint_in_place)
        env["OOMLADDER_SUPERVISOR_PID"] = str(os.getpid())  # the kernel is its own supervisor
        for name in [k for k in os.environ if k.startswith("OOMLADDER_") and k not in env and k not in _ROLE_VARIABLES]:
            del os.environ[name]  # the last attempt's: a resume point, a plan setting this one does not set
        os.environ.update(env)
        if self.journal.view().attempts[-1].number > 1:
            adapter.new_attempt()
            worker_files.append_progress({"adapter": _version()})
        return launch, AttemptFiles(launch.attempt_dir), self.monotonic()


def _is_memory(record: dict[str, Any], memory_cap: int | None) -> bool:
    from oomladder.classify import Evidence, classify
    return classify(Evidence(returncode=1, record=record, capped=bool(memory_cap))).is_memory


def _never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a kernel's run launches nothing: its cells are the attempt")


def _version() -> str:
    from oomladder import __version__
    return __version__


def default_run_dir(now: Callable[[], float] = time.time) -> Path:
    return Path("oomladder-runs") / time.strftime("notebook-%Y%m%d-%H%M%S", time.localtime(now()))
