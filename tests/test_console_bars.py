"""The console while a run goes on and when it ends: the running attempt's progress bar under the live
table (step / total, steps per second, time left), and each attempt's peak as a bar against the cap."""

import io

from rich.console import Console

from oomladder.record.history import fold
from oomladder.views.bars import peak_bars, running_progress, seconds_left, steps_per_second
from oomladder.views.display import LineDisplay, LiveDisplay
from tests.test_report_html import T0, MiB, night


def mid_run():
    """The night as it stood 4 s after attempt 2 journaled step 4 (at 46 s): steps 3 and 4 ten seconds apart."""
    return [r for r in night() if r["ts"] <= T0 + 46]


def text_of(renderable, width=120):
    console = Console(width=width, color_system=None, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_the_running_attempt_shows_its_step_pace_and_time_left():
    attempt = fold(mid_run()).attempts[-1]
    assert steps_per_second(attempt) == 0.1
    assert seconds_left(attempt, now=T0 + 50) == 16.0  # 2 steps at 10 s each, 4 s of it already gone
    line = text_of(running_progress(fold(mid_run()), now=T0 + 50))
    assert "attempt 2" in line and "step 4/6" in line and "0.10 steps/s" in line and "0:16 left" in line


def test_the_pace_is_unknown_before_a_step_and_counts_the_first_steps_warm_up_after_it():
    before = [r for r in night() if r["ts"] <= T0 + 26]  # attempt 2's training began at 26 s
    line = text_of(running_progress(fold(before), now=T0 + 27))
    assert "step 0/6" in line and "- steps/s" in line and "time left: -" in line
    one = fold([r for r in night() if r["ts"] <= T0 + 36]).attempts[-1]  # step 3 at 36 s
    assert steps_per_second(one) == 0.1


def test_no_bar_when_nothing_trains():
    assert running_progress(fold(night()), now=T0 + 100) is None
    assert running_progress(fold(night()[:2]), now=T0 + 1) is None  # started, max_steps not known yet


def test_the_end_of_the_run_shows_each_peak_against_the_cap():
    text = text_of(peak_bars(fold(night())))
    assert "Peak memory against the memory cap, 1.2 GiB" in text
    assert "1  start" in text and "906 MiB (76%)" in text and "OOM, 500 MiB more tried" in text
    assert "2  bf16 + halve_batch" in text and "926 MiB (77%)" in text


def test_without_a_cap_the_peaks_are_against_the_device_or_the_largest():
    records = night()
    records[0] = {**records[0], "memory_cap": None}
    assert "against the largest peak (no cap)" in text_of(peak_bars(fold(records)))
    records[2] = {**records[2], "facts": {"device": "cuda", "device_memory": 2 * 1024 * MiB}}
    assert "against the device's memory, 2.0 GiB" in text_of(peak_bars(fold(records)))


def test_the_live_display_draws_the_bar_under_the_table_and_the_peaks_at_the_end():
    out = io.StringIO()
    console = Console(file=out, width=140, force_terminal=True, color_system=None)
    display = LiveDisplay(console, "oomladder: python train.py")
    display.update(fold(mid_run()))
    shown = text_of(display._render(), width=140)
    assert shown.index("running at step 4/6") < shown.index("attempt 2  ") and "steps/s" in shown
    display.close(fold(night()))
    assert "Peak memory against the memory cap" in out.getvalue()


def test_a_log_file_gets_the_table_and_the_peaks_at_the_end():
    out = io.StringIO()
    LineDisplay(Console(file=out, width=140, color_system=None), "t").close(fold(night()))
    assert "finished at step 6/6" in out.getvalue() and "906 MiB (76%)" in out.getvalue()
