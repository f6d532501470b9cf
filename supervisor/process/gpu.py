"""Relaunch hygiene on GPUs: the next attempt starts only once the dead worker's GPU memory is
released, so it does not fail on memory a dying process still held. Uses NVML where the
`pynvml` module (nvidia-ml-py) is installed; elsewhere it does nothing."""

from __future__ import annotations

import time
from collections.abc import Callable


def gpu_pids() -> set[int] | None:
    """Processes holding memory on any GPU, or None where NVML cannot be asked."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        pids: set[int] = set()
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                pids.add(proc.pid)
        return pids
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def wait_released(before: set[int] | None, timeout: float = 30.0, *, pids: Callable[[], set[int] | None] = gpu_pids,
                  clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> str:
    """Wait until no GPU process is left that was not there before the attempt. Returns what was seen:
    "no-nvml", "released" or "still held" (after `timeout`)."""
    if before is None:
        return "no-nvml"
    deadline = clock() + timeout
    while True:
        now = pids()
        if now is None or not (now - before):
            return "released"
        if clock() >= deadline:
            return "still held"
        sleep(0.5)
