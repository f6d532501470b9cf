"""Shared test helpers. End-to-end tests (tests/e2e) run real training workers; the rest are fast."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class FakeDisplay:
    """A display that shows nothing and keeps the events it is told, in order. Plain, not oomladder's
    NullDisplay: this file imports oomladder only once pytest_configure has checked which one it is."""

    live = shows_output = verbose = False

    def __init__(self):
        self.events = []

    def event(self, text):
        self.events.append(text)

    def update(self, view):
        pass

    def output(self, lines, pending):
        pass

    def detail(self, text):
        pass

    def close(self, view):
        pass


def pytest_configure(config):
    """The suite tests this checkout: `oomladder` must be its own editable install (scripts/setup), not
    another worktree's or an installed release."""
    import oomladder
    if not Path(oomladder.__file__).resolve().is_relative_to(ROOT):
        raise pytest.UsageError(f"oomladder is imported from {Path(oomladder.__file__).parent}, not from this "
                                f"checkout ({ROOT}): run scripts/setup here")


def oomladder_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "oomladder", *args]


@pytest.fixture(scope="session")
def env():
    """The environment for a subprocess of oomladder, on the default path (in-place recovery and split ahead on, the
    CPU cap counted by default, whatever the shell running the suite set), without a terminal's width guess. Shared:
    never change it in place (`{**env, ...}` instead)."""
    e = {k: v for k, v in os.environ.items()
         if k not in ("OOMLADDER_IN_PLACE", "OOMLADDER_SPLIT_AHEAD", "OOMLADDER_CPU_CAP")}
    e["COLUMNS"] = "200"
    # tests/ and benchmarks/ importable in subprocesses (oomladder itself is the editable install).
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    return e


@pytest.fixture(scope="session")
def relaunch_env(env):
    """`env` with in-place recovery off (`OOMLADDER_IN_PLACE=0`, as `--no-in-place`): every OOM is met with a
    relaunch on the ladder's next plan. For the tests about the relaunch, the safety net under in-place recovery:
    the attempts and decisions, the checkpoints a relaunch resumes from, the climb and its end. A test whose OOM
    is not about the relaunch takes `env`, and holds on the default path."""
    return {**env, "OOMLADDER_IN_PLACE": "0"}


def capped_measure() -> str:
    """The peak's measure in a process the CPU cap reached, on this machine's default: the allocator cap where it
    can be built (process/allocator.py), else the address space. A launcher above the ranks has none."""
    from oomladder.process import allocator
    return "allocated_over_baseline" if allocator.choose("auto", {})[0] else "address_space_over_baseline"


def processes_of(run_dir, attempt: int | None = None) -> list[int]:
    """Live processes started for `run_dir` (or one attempt of it): every worker carries its attempt folder
    in its environment."""
    marker = f"OOMLADDER_ATTEMPT_DIR={Path(run_dir).resolve()}".encode()
    if attempt is not None:
        marker += f"/attempts/{attempt:03d}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ and state != "Z":
            found.append(int(entry))
    return found
