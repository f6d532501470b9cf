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
