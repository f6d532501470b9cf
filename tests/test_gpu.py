"""Relaunch hygiene: the next attempt waits for the dead worker's GPU memory (NVML faked here)."""

from oomladder.process.gpu import wait_released
from tests.conftest import FakeClock


def test_the_next_attempt_waits_until_the_dead_workers_gpu_processes_are_gone():
    clock, seen = FakeClock(), iter([{1, 99}, {1, 99}, {1}])
    assert wait_released({1}, pids=lambda: next(seen), clock=clock, sleep=clock.sleep) == "released"
    assert clock.now == 1.0


def test_memory_still_held_is_reported_after_the_timeout():
    clock = FakeClock()
    assert wait_released({1}, timeout=5, pids=lambda: {1, 99}, clock=clock, sleep=clock.sleep) == "still held"


def test_without_nvml_nothing_is_waited_for():
    assert wait_released(None) == "no-nvml"
