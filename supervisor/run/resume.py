"""Where a run starts: a fresh run on the program's own settings, or a run directory that already holds a
run of the same command continued on the plan it had reached, after taking in what its last attempt left
(its supervisor died) and stopping anything of it still running."""

from __future__ import annotations

from collections.abc import Callable

from oomladder.classify import Failure, Kind
from oomladder.errors import RunDirError
from oomladder.nodes.topology import Topology, attempt_dir
from oomladder.nodes.world import World
from oomladder.process.rundir import stop_run_processes
from oomladder.record import schema
from oomladder.record.history import RunView
from oomladder.record.journal import Journal
from oomladder.run.config import RunConfig
from oomladder.run.decide import reached_plan
from oomladder.run.outcomes import NextAttempt
from oomladder.run.watch import AttemptWatcher
from oomladder.status import AttemptOutcome, RunStatus
from oomladder.worker.protocol.files import AttemptFiles


def starting_point(config: RunConfig, journal: Journal, watcher: AttemptWatcher, world: World | None,
                   topology: Topology, hurry: Callable[[], bool] = lambda: False) -> NextAttempt:
    """The next attempt. A signal during the sweep lets it end (at once, after a second one: `hurry`); the loop
    then journals the signal and ends the run as it ends any other."""
    if not journal.records:
        given = config.initial.set_fields()
        return NextAttempt(config.initial, None, "given with --set" if given else "")
    view = journal.view()
    if view.run and view.run.get("command") != list(config.command):
        raise RunDirError(f"run directory '{config.run_dir}' holds a run of another command "
                          f"({' '.join(view.run.get('command') or [])}): give this run its own --run-dir")
    if view.status is RunStatus.FINISHED:
        raise RunDirError(f"the run in '{config.run_dir}' already finished (its report: "
                          f"{config.run_dir / 'report.md'}): give this run its own --run-dir")
    launched = [r for r in journal.records if r.get("type") == schema.LAUNCHED]
    stray = stop_run_processes(config.run_dir, launched=launched, hurry=hurry)
    if stray:
        journal.append(schema.WARNING, attempt=None, about="stray", text=f"stopped {len(stray)} process(es) still "
                       f"running from an earlier supervisor of this run (pids {', '.join(map(str, stray))})")
    close_orphans(config, journal, watcher, world, topology, view)
    if world is not None:
        world.adopt_missed(journal)
    plan = reached_plan(journal.view()).merged(config.initial)
    return NextAttempt(plan, "resume", "continues on the plan the earlier run reached")


def close_orphans(config: RunConfig, journal: Journal, watcher: AttemptWatcher, world: World | None,
                  topology: Topology, view: RunView) -> None:
    """An attempt the journal never saw end: its supervisor died. Take in what its worker left."""
    for attempt in view.attempts:
        if attempt.status is not AttemptOutcome.RUNNING:
            continue
        files = AttemptFiles(attempt_dir(config.run_dir, attempt.number, topology))
        died = journal.last_ts  # about when: the supervisor journaled at every poll until then
        watcher.take_in(attempt.number, files, drain=True)
        checkpoint = watcher.journal_checkpoint(attempt.number, files)
        if world is not None:
            world.orphan_ended(journal, attempt.number, died, checkpoint)
        journal.append(schema.ATTEMPT_ENDED, attempt=attempt.number, outcome=AttemptOutcome.INTERRUPTED, exit_code=None,
                       failure=Failure(Kind.INTERRUPTED, None, "the supervisor died during this attempt").to_dict())
