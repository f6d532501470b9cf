"""Shared test helpers. End-to-end tests (tests/e2e) run real training workers; the rest are fast."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def oomladder_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "supervisor", *args]


@pytest.fixture
def env():
    """The environment for a subprocess of oomladder, without a terminal's width guess."""
    e = dict(os.environ)
    e["COLUMNS"] = "200"
    return e
