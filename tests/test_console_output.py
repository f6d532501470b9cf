"""The program's own output on the console, as torchrun shows its ranks': each line the workers write, prefixed by
its attempt and rank, above the live table or between oomladder's lines in a log; its progress bar as it is
redrawn; nothing of it under --quiet; and under --verbose, the arithmetic behind each decision.

The files here are written by the test, and the workers are the scripted stand-ins of tests/test_runner.py:
what reaches the console from a real training program is tests/e2e/test_recovery.py's demo run."""

import io
from pathlib import Path

import pytest
from rich.console import Console

from oomladder.ladder import load_ladder
from oomladder.process.workers import LaunchSpec
from oomladder.record.history import fold
from oomladder.run import RunConfig, Runner
from oomladder.run.echo import CHUNK, Echo, echo_for, echoing, launches_ranks
from oomladder.views.display import LineDisplay, LiveDisplay, ProgramLine, Unbreakable, Verbosity
from tests.test_console_bars import mid_run, text_of
from tests.test_runner import ScriptedWorkers, finish, oom_at, oom_with_the_model_reported


def echo_of(tmp_path, several=False):
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    return Echo(2, (out, err), lambda: several), out, err


def write(path, text):
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


# --- reading what the program wrote --------------------------------------------------------------------------

def test_a_line_is_shown_once_it_ends_with_its_attempt_and_rank(tmp_path):
    echo, out, _ = echo_of(tmp_path)
    assert echo.lines() == []  # nothing written yet: no file is not an error
    write(out, "{'loss': 1.23}\nstep 2 of")
    assert echo.lines() == [ProgramLine(2, 0, "{'loss': 1.23}")]
    assert echo.lines() == []  # read once
    write(out, " 6\n")
    assert [line.text for line in echo.lines()] == ["step 2 of 6"]


def test_a_progress_bar_shows_its_latest_state_while_drawn_and_its_last_once_it_ends(tmp_path):
    echo, _, err = echo_of(tmp_path)
    write(err, "  0%|          | 0/6\r 17%|█▋        | 1/6")
    assert echo.lines() == [] and echo.pending() == ProgramLine(2, 0, " 17%|█▋        | 1/6")
    write(err, "\r100%|██████████| 6/6\r\n")
    assert [line.text for line in echo.lines()] == ["100%|██████████| 6/6"] and echo.pending() is None


def test_the_programs_last_words_are_shown_when_it_ends_even_without_a_newline(tmp_path):
    echo, out, err = echo_of(tmp_path)
    write(out, "saved\n")
    write(err, "RuntimeError: DefaultCPUAllocator: can't allocate memory")
    assert [line.text for line in echo.lines(final=True)] == [
        "saved", "RuntimeError: DefaultCPUAllocator: can't allocate memory"]


def test_a_flood_of_output_is_read_a_chunk_at_a_look_and_whole_at_the_end(tmp_path):
    echo, out, _ = echo_of(tmp_path)
    line = "x" * 99 + "\n"
    write(out, line * (3 * CHUNK // len(line)))
    first = echo.lines()
    assert 0 < len(first) <= CHUNK // len(line) + 1
    assert len(first) + len(echo.lines(final=True)) == 3 * CHUNK // len(line)


def test_a_rank_the_launcher_marked_is_kept_and_unmarked_lines_of_several_ranks_have_none(tmp_path):
    echo, out, _ = echo_of(tmp_path, several=True)
    write(out, "[rank1]: Traceback (most recent call last):\n[default0]:loss 2.0\nloss 2.1\n")
    assert echo.lines() == [ProgramLine(2, 1, "Traceback (most recent call last):"), ProgramLine(2, 0, "loss 2.0"),
                            ProgramLine(2, None, "loss 2.1")]


@pytest.mark.parametrize("argv, several", [
    (["python", "train.py"], False),
    (["torchrun", "--nproc_per_node", "2", "train.py"], True),
    (["/venv/bin/python", "-m", "torch.distributed.run", "train.py"], True),
    (["accelerate", "launch", "--multi_gpu", "train.py"], True),
    (["python", "accelerate.py", "launch"], False),
])
def test_a_launcher_of_ranks_is_told_from_its_command(argv, several):
    assert launches_ranks(argv) is several


def test_an_attempt_learns_it_has_several_ranks_when_rank_1_reports(tmp_path):
    spec = LaunchSpec(("python", "train.py"), {"OOMLADDER_ATTEMPT": "003", "OOMLADDER_ATTEMPT_DIR": str(tmp_path)},
                      str(tmp_path), tmp_path / "stdout.log", tmp_path / "stderr.log")
    echo = echo_for(spec)
    write(tmp_path / "stdout.log", "one\n")
    assert echo.lines() == [ProgramLine(3, 0, "one")]
    (tmp_path / "observed.1.json").write_text("{}")
    write(tmp_path / "stdout.log", "two\n")
    assert echo.lines() == [ProgramLine(3, None, "two")]


# --- on the console ------------------------------------------------------------------------------------------

def console(width=80, terminal=False):
    out = io.StringIO()
    return Console(file=out, width=width, force_terminal=terminal, color_system=None), out


def test_a_log_file_gets_each_line_whole_with_its_prefix_and_without_the_programs_colours():
    shown, out = console(width=60)
    display = LineDisplay(shown, "t")
    long = "{'loss': '10.41', 'grad_norm': '0.2461', 'learning_rate': '0.001', 'epoch': '0.1667'}"
    display.output([ProgramLine(1, 0, "\x1b[32mgreen\x1b[0m"), ProgramLine(1, 0, long)], None)
    assert out.getvalue().splitlines() == ["[attempt 1 rank 0] green", f"[attempt 1 rank 0] {long}"]


def test_quiet_shows_oomladders_lines_alone_and_verbose_adds_the_details():
    shown, out = console()
    quiet = Unbreakable(LineDisplay(shown, "t", Verbosity.QUIET))
    quiet.output([ProgramLine(1, 0, "loss 2.0")], None)
    quiet.event("attempt 1: start")
    quiet.explain(lambda: ["estimated peak: 1.8 GiB"])
    assert out.getvalue().splitlines() == ["oomladder: attempt 1: start"]
    shown, out = console()
    verbose = Unbreakable(LineDisplay(shown, "t", Verbosity.VERBOSE))
    verbose.output([ProgramLine(1, 0, "loss 2.0")], None)
    verbose.explain(lambda: ["estimated peak: 1.8 GiB"])
    verbose.explain(lambda: 1 / 0)  # the words failing never costs the run
    assert out.getvalue().splitlines() == ["[attempt 1 rank 0] loss 2.0", "oomladder:   estimated peak: 1.8 GiB",
                                           "oomladder:   the arithmetic could not be shown (ZeroDivisionError: "
                                           "division by zero)"]


def test_on_a_terminal_the_line_being_drawn_sits_right_above_the_live_table():
    shown, out = console(width=120, terminal=True)
    display = LiveDisplay(shown, "oomladder: python train.py")
    display.update(fold(mid_run()))
    display.output([ProgramLine(2, 0, "{'loss': 9.1}")], ProgramLine(2, 0, " 67%|██████▋   | 4/6"))
    live = text_of(display._render(), width=120)
    assert live.splitlines()[0] == "[attempt 2 rank 0]  67%|██████▋   | 4/6"
    assert "attempt 2" in live.splitlines()[1] or "oomladder: python train.py" in live.splitlines()[1]
    display.close(fold(mid_run()))
    printed = out.getvalue()
    assert "[attempt 2 rank 0] {'loss': 9.1}" in printed and printed.index("{'loss': 9.1}") < printed.rindex("┏")


# --- through the run loop ------------------------------------------------------------------------------------

class Recorded:
    """A console display that keeps what it is given, in order."""

    live, shows_output, verbose = False, True, True

    def __init__(self):
        self.shown = []

    def update(self, view):
        pass

    def event(self, text):
        self.shown.append(("event", text))

    def output(self, lines, pending):
        self.shown += [("program", f"{line.attempt}/{line.rank} {line.text}") for line in lines]

    def detail(self, text):
        self.shown.append(("detail", text))

    def close(self, view):
        pass


def talking(behaviour, *lines):
    """A scripted worker that also prints, as a program does."""
    def act(folder, plan):
        (folder / "stdout.log").write_text("".join(f"{line}\n" for line in lines))
        return behaviour(folder, plan)
    return act


def supervised(tmp_path, *behaviours, memory_cap=2**30):
    display = Recorded()
    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", ladder=load_ladder(None),
                       memory_cap=memory_cap)
    code = Runner(config, launcher=echoing(ScriptedWorkers(*behaviours), display), display=display,
                  clock=iter(range(10**6)).__next__, sleep=lambda s: None, environ={}).run()
    return code, display.shown


def test_the_programs_lines_come_before_what_oomladder_makes_of_its_end(tmp_path):
    code, shown = supervised(tmp_path, talking(oom_at(3), "step 1", "step 2"), talking(finish, "step 3"))
    assert code == 0
    said = [text for kind, text in shown if kind in ("program", "event")]
    assert said[0].startswith("attempt 1: start; log: ")
    died = next(i for i, text in enumerate(said) if text.startswith("attempt 1: CPU allocator out of memory"))
    assert said.index("1/0 step 1") < said.index("1/0 step 2") < died  # each once, in order, before the verdict
    assert said.count("1/0 step 1") == 1 and said.count("1/0 step 2") == 1
    assert died < said.index("2/0 step 3") < next(i for i, text in enumerate(said) if text.startswith("finished"))


def test_verbose_shows_what_the_estimator_computed_for_each_decision(tmp_path):
    code, shown = supervised(tmp_path, oom_with_the_model_reported(3, 512), finish)
    details = [text for kind, text in shown if kind == "detail"]
    assert code == 0
    assert details[0] == "the error's numbers: tried to allocate 500 MiB"
    assert details[1].startswith("estimated peak at micro-batch 16 x 512 tokens: ") and "for the plan that failed" in \
        details[1] and details[1].endswith(" usable")
    assert details[2].startswith("calibration: ")
    assert details[3].startswith("where the estimated peak of the plan that failed goes: ")
    assert any(d.startswith("left out: int8: ") for d in details)
    decision = next(i for i, (kind, text) in enumerate(shown) if kind == "event" and "; next: " in text)
    assert max(i for i, (kind, _) in enumerate(shown) if kind == "detail") < decision  # the working, then the verdict


def test_verbose_says_when_there_is_no_estimate_to_show(tmp_path):
    _, shown = supervised(tmp_path, oom_at(3), finish)
    assert any(text.startswith("no estimate: the program did not report its model's shape") for kind, text in shown
               if kind == "detail")


def test_every_line_is_kept_in_the_attempts_log_as_the_program_wrote_it(tmp_path):
    _, shown = supervised(tmp_path, talking(finish, "\x1b[1mbold\x1b[0m", "plain"))
    assert ("program", "1/0 plain") in shown
    assert Path(tmp_path / "run" / "attempts" / "001" / "stdout.log").read_text() == "\x1b[1mbold\x1b[0m\nplain\n"


def test_a_program_that_writes_faster_than_it_is_shown_is_skipped_ahead_on_the_console_not_in_its_log(tmp_path):
    from oomladder.run.echo import BACKLOG
    echo, out, _ = echo_of(tmp_path)
    line = "y" * 1023 + "\n"
    write(out, line * (2 * BACKLOG // len(line)) + "the newest line\n")
    shown = echo.lines(final=True)
    assert shown[0].text.startswith("... ") and "MiB of output not shown here: " in shown[0].text
    assert str(out) in shown[0].text and shown[-1].text == "the newest line"
    assert len(shown) < 1 + 2 * CHUNK // len(line)  # the newest output, not the backlog
    assert {line.text for line in shown[1:]} == {"y" * 1023, "the newest line"}  # whole lines only
    assert out.stat().st_size == 2 * BACKLOG + len("the newest line\n")


def test_the_last_words_written_as_the_program_ends_are_shown_once_its_group_is_reaped(tmp_path):
    class Ending:
        """A worker that writes its last words, without a newline, as it exits."""

        pid, polls = 4242, 0

        def poll(self):
            self.polls += 1
            if self.polls == 1:
                return None
            write(tmp_path / "stdout.log", "Killed")
            return 137

        def reap_group(self):
            pass

    display = Recorded()
    spec = LaunchSpec(("python", "train.py"), {"OOMLADDER_ATTEMPT": "001", "OOMLADDER_ATTEMPT_DIR": str(tmp_path)},
                      str(tmp_path), tmp_path / "stdout.log", tmp_path / "stderr.log")
    handle = echoing(lambda spec: Ending(), display)(spec)
    while handle.poll() is None:
        pass
    assert display.shown == [] and handle.polls == 2  # the real handle's own attributes show through
    handle.reap_group()
    assert display.shown == [("program", "1/0 Killed")]
