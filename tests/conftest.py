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
    """The environment for a subprocess of oomladder, without a terminal's width guess. Shared: never change
    it in place (`{**env, ...}` instead)."""
    e = dict(os.environ)
    e["COLUMNS"] = "200"
    # tests/ and benchmarks/ importable in subprocesses (oomladder itself is the editable install).
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    # The tests of the relaunch (the safety net) meet every OOM with a relaunch; tests/e2e/test_in_place.py
    # turns in-place recovery back on (`in_place_env`).
    e["OOMLADDER_IN_PLACE"] = "0"
    return e


@pytest.fixture(scope="session")
def in_place_env(env):
    """The environment with in-place recovery on, as it is by default."""
    return {k: v for k, v in env.items() if k != "OOMLADDER_IN_PLACE"}


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
