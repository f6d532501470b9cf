"""Signals to oomladder while a run is under way: SIGINT, SIGTERM and SIGHUP ask for the worker group to
be stopped gracefully (its step in flight is saved); a second one, at once (run/loop.py counts them)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


class forwarded_signals:
    def __init__(self, request_stop: Callable[[int], None]) -> None:
        self.request_stop = request_stop
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a closed terminal stops like a scheduler
            self.previous[sig] = signal.signal(sig, lambda signum, frame: self.request_stop(signum))

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
