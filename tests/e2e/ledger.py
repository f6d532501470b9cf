"""The training program's own record of the optimizer steps it ran (train_tiny.py --count-steps):
what the promise "no step lost or repeated" is checked against, not what the supervisor believes."""

from pathlib import Path


def steps_by_process(path: Path) -> list[list[int]]:
    """The steps each process ran, processes in the order they started."""
    runs: dict[str, list[int]] = {}
    for line in path.read_text().splitlines():
        pid, step = line.split()
        runs.setdefault(pid, []).append(int(step))
    return list(runs.values())


def assert_each_step_ran_once(path: Path, max_steps: int) -> None:
    ran = [step for steps in steps_by_process(path) for step in steps]
    assert ran == list(range(1, max_steps + 1)), f"the program ran steps {ran}, not 1..{max_steps} once each"


def steps_in_trainer_logs(logs: list[Path], steps_per_epoch: int) -> list[list[int]]:
    """The steps each process logged, for a program whose only record is the Trainer's own log line per optimizer
    step (`logging_steps=1`: `{'loss': ..., 'epoch': '0.25'}` on stdout; TRL's CLI). One log per process; the step
    is the epoch times the steps an epoch has."""
    import re
    return [[round(float(epoch) * steps_per_epoch) for epoch in re.findall(r"\{'loss': .*'epoch': '([\d.]+)'\}",
                                                                        log.read_text())] for log in logs]
