"""The supervisor's policy, with scripted stand-in workers: no processes, no waiting.

The stand-ins write the files the real adapter writes. They are not evidence that recovery
works with real training: tests/e2e runs the same loop on real Trainer workers and real OOMs.
"""

import json
import signal
from itertools import count
from pathlib import Path

import pytest

from oomladder.errors import RunDirError
from oomladder.ladder import load_ladder, parse_ladder
from oomladder.plan import Plan
from oomladder.process.workers import LaunchError
from oomladder.record.history import fold
from oomladder.record.journal import read_journal
from oomladder.run import RunConfig, Runner
from tests.conftest import FakeClock, FakeDisplay

CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
           "to allocate 524288000 bytes. Error code 12 (Cannot allocate memory)")
PROGRAM = {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1, "per_device_eval_batch_size": 8,
           "precision": "bf16", "load_dtype": "bfloat16", "quantization": "none", "gradient_checkpointing": False,
           "dataloader_num_workers": 0, "optim": "adamw_torch", "world_size": 1}
FACTS = {"device": "cpu", "bf16_supported": True, "base_frozen": True}


class Handle:
    def __init__(self, returncode):
        self.pid, self.returncode, self.polls = 4242, returncode, 0
        self.stopped_with = None

    def poll(self):
        self.polls += 1
        return None if self.polls < 2 else self.returncode

    def stop(self, sig=signal.SIGTERM, grace=10.0, hurry=lambda: False):
        self.stopped_with = sig
        return -sig

    def reap_group(self):
        pass


class ScriptedWorkers:
    """Launcher whose n-th worker does what the n-th behaviour says, writing what the adapter writes."""

    def __init__(self, *behaviours):
        self.behaviours = list(behaviours)
        self.specs = []

    def __call__(self, spec):
        self.specs.append(spec)
        behaviour = self.behaviours.pop(0)
        return Handle(behaviour(Path(spec.env["OOMLADDER_ATTEMPT_DIR"]), json.loads(spec.env["OOMLADDER_PLAN"])))

    def plans(self):
        return [json.loads(s.env["OOMLADDER_PLAN"]) for s in self.specs]


def _observe(folder, program=PROGRAM):
    (folder / "observed.0.json").write_text(json.dumps({"plan": program, "facts": FACTS}))


def _steps(folder, upto, max_steps=6):
    with open(folder / "progress.0.jsonl", "a") as f:
        for step in range(1, upto + 1):
            f.write(json.dumps({"step": step, "max_steps": max_steps, "loss": 10.0 - step, "phase": "train",
                                "peak": 100 * step, "peak_measure": "address_space_over_baseline"}) + "\n")


def oom_at(step):
    def behaviour(folder, plan):
        _observe(folder)
        _steps(folder, step - 1)
        (folder / "failure.0.json").write_text(json.dumps({
            "exc_type": "RuntimeError", "message": CPU_OOM, "step": step - 1, "max_steps": 6, "phase": "train",
            "ts": 1.0, "peak": 999}))
        return 1
    return behaviour


def finish(folder, plan):
    _observe(folder)
    _steps(folder, 6)
    return 0


def bug(folder, plan):
    _observe(folder)
    (folder / "failure.0.json").write_text(json.dumps({"exc_type": "KeyError", "message": "'labels'", "step": 0}))
    return 1


def run(tmp_path, launcher, ladder=None, memory_cap=2**30, **options):
    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run",
                       ladder=ladder or load_ladder(None), memory_cap=memory_cap, **options)
    ticks = count()
    runner = Runner(config, launcher=launcher, clock=lambda: float(next(ticks)), sleep=lambda s: None, environ={})
    return runner.run(), fold(read_journal(tmp_path / "run" / "journal.jsonl"))


def test_a_memory_cap_far_under_any_model_is_warned_of_at_the_start(tmp_path):
    code, view = run(tmp_path, ScriptedWorkers(finish), memory_cap=12 * 2**20)
    warning, = [w for w in view.warnings if w.about == "memory_cap"]
    assert "12.0 MiB, is far under any model" in warning.text and "Check --memory-cap's unit" in warning.text
    code, view = run(tmp_path / "big", ScriptedWorkers(finish), memory_cap=64 * 2**20)
    assert not [w for w in view.warnings if w.about == "memory_cap"]


def test_an_oom_walks_the_ladder_and_the_next_attempt_finishes(tmp_path):
    workers = ScriptedWorkers(oom_at(3), oom_at(3), finish)
    code, view = run(tmp_path, workers)
    assert code == 0
    assert [a.rung for a in view.attempts] == [None, "int8", "halve_batch"]
    assert [a.status for a in view.attempts] == ["failed", "failed", "finished"]
    assert workers.plans()[0] == {}  # the first attempt runs the program as it is
    assert workers.plans()[2]["per_device_train_batch_size"] == 8
    assert workers.plans()[2]["gradient_accumulation_steps"] == 2
    assert {a.plan.effective_batch for a in view.attempts} == {16}
    assert view.attempts[0].failure.summary == "CPU allocator out of memory: tried to allocate 500 MiB"
    assert view.ended.status == "finished"


def test_the_report_is_written_beside_the_journal(tmp_path):
    run(tmp_path, ScriptedWorkers(oom_at(3), oom_at(3), finish))
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["effective_batch"] == {"before": 16, "after": 16}
    assert [row["setting"] for row in report["before_after"]] == [
        "per_device_train_batch_size", "gradient_accumulation_steps", "quantization"]
    assert "| 3 | halve_batch | per_device_train_batch_size 16→8, gradient_accumulation_steps 1→2 |" in (
        tmp_path / "run" / "report.md").read_text()


def test_a_bug_stops_the_run_without_walking_the_ladder(tmp_path):
    code, view = run(tmp_path, ScriptedWorkers(bug))
    assert code == 3
    assert len(view.attempts) == 1 and not view.decisions
    assert "KeyError: 'labels'" in view.ended.reason and "ladder was not walked" in view.ended.reason


def test_when_no_rung_is_left_the_run_stops_and_says_why(tmp_path):
    code, view = run(tmp_path, ScriptedWorkers(oom_at(1), oom_at(1)), ladder=parse_ladder(
        "rungs: [{halve_batch: {times: 1}}]", "one rung"))
    assert code == 4
    assert view.ended.status == "ladder_exhausted"
    assert "no rung of the ladder is left" in view.ended.reason


def test_the_attempt_budget_is_kept(tmp_path):
    code, view = run(tmp_path, ScriptedWorkers(oom_at(1), oom_at(1)), max_attempts=2)
    assert code == 5 and len(view.attempts) == 2
    assert view.ended.status == "budget_exhausted"
    assert "the --max-attempts budget (2 attempts) is spent" in view.ended.reason


def test_the_same_run_directory_again_continues_on_the_plan_it_reached(tmp_path):
    run(tmp_path, ScriptedWorkers(oom_at(3), oom_at(3)), max_attempts=2)
    workers = ScriptedWorkers(finish)
    code, view = run(tmp_path, workers)
    assert code == 0
    assert workers.plans()[0]["per_device_train_batch_size"] == 8
    assert [a.number for a in view.attempts] == [1, 2, 3] and view.attempts[-1].rung == "resume"


def test_a_run_directory_of_another_command_is_refused(tmp_path):
    run(tmp_path, ScriptedWorkers(finish))
    config = RunConfig(command=("python", "other.py"), run_dir=tmp_path / "run", ladder=load_ladder(None))
    with pytest.raises(RunDirError, match="holds a run of another command"):
        Runner(config, launcher=ScriptedWorkers(finish), environ={}).run()
    assert len(read_journal(tmp_path / "run" / "journal.jsonl")) > 3  # the earlier run is untouched


def test_placeholders_and_variables_carry_the_plan_to_any_program(tmp_path):
    workers = ScriptedWorkers(oom_at(2), finish)
    config = RunConfig(command=("train", "--bs={per_device_train_batch_size}", "--acc", "{gradient_accumulation_steps}",
                                '{"json": 1}'), run_dir=tmp_path / "run", ladder=parse_ladder("rungs: [halve_batch]",
                                                                                              "t"),
                       initial=Plan(per_device_train_batch_size=16, gradient_accumulation_steps=1), memory_cap=2**30)
    assert Runner(config, launcher=workers, clock=count().__next__, sleep=lambda s: None, environ={}).run() == 0
    first, second = workers.specs
    assert first.argv == ("train", "--bs=16", "--acc", "1", '{"json": 1}')
    assert second.argv == ("train", "--bs=8", "--acc", "2", '{"json": 1}')
    assert second.env["OOMLADDER_PER_DEVICE_TRAIN_BATCH_SIZE"] == "8"
    assert second.env["OOMLADDER_MEMORY_CAP"] == str(2**30)


def test_a_command_that_cannot_start_is_bad_input(tmp_path):
    def cannot(spec):
        raise LaunchError("cannot start 'trian.py': No such file or directory")
    code, view = run(tmp_path, cannot)
    assert code == 2 and view.ended.status == "launch_failed"


def test_the_allocator_rung_reaches_the_worker_under_both_variable_names(tmp_path):
    cuda = dict(FACTS, device="cuda")

    def cuda_oom(folder, plan):
        (folder / "observed.0.json").write_text(json.dumps({"plan": PROGRAM, "facts": cuda}))
        (folder / "failure.0.json").write_text(json.dumps({
            "exc_type": "torch.OutOfMemoryError", "message": "CUDA out of memory. Tried to allocate 20.00 MiB."}))
        return 1

    workers = ScriptedWorkers(cuda_oom, finish)
    assert run(tmp_path, workers)[0] == 0
    env = workers.specs[1].env
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == env["PYTORCH_ALLOC_CONF"] == "expandable_segments:True"


def test_a_stop_signal_stops_the_worker_group_and_the_run_says_so(tmp_path):
    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", ladder=load_ladder(None))
    handles = []

    def launcher(spec):
        handles.append(Handle(None))
        return handles[-1]

    runner = Runner(config, launcher=launcher, sleep=lambda s: runner.request_stop(signal.SIGTERM), environ={})
    assert runner.run() == 143
    assert handles[0].stopped_with == signal.SIGTERM
    view = fold(read_journal(tmp_path / "run" / "journal.jsonl"))
    assert view.ended.status == "interrupted" and view.attempts[0].status == "interrupted"


def test_a_worker_without_progress_is_stopped_and_retried_once_then_the_run_stops(tmp_path):
    clock, handles = FakeClock(), []

    def silent(spec):
        handles.append(Handle(None))
        return handles[-1]

    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", ladder=load_ladder(None),
                       hang_timeout=60, poll_interval=5)
    code = Runner(config, launcher=silent, clock=clock, sleep=clock.sleep, environ={}).run()
    assert code == 3
    view = fold(read_journal(tmp_path / "run" / "journal.jsonl"))
    assert [a.rung for a in view.attempts] == [None, "retry"]
    assert [a.failure.kind.value for a in view.attempts] == ["hang", "hang"]
    assert all(h.stopped_with == signal.SIGTERM for h in handles)
    assert view.ended.status == "hang" and "2 times in a row; stopped after 1 retries" in view.ended.reason


def test_the_wall_time_budget_stops_a_running_attempt_and_names_itself(tmp_path):
    clock = FakeClock()
    handle = Handle(None)
    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", ladder=load_ladder(None),
                       max_wall_time=3600, poll_interval=60)
    code = Runner(config, launcher=lambda spec: handle, clock=clock, sleep=clock.sleep, environ={}).run()
    assert code == 5 and handle.stopped_with == signal.SIGTERM
    view = fold(read_journal(tmp_path / "run" / "journal.jsonl"))
    assert view.ended.status == "budget_exhausted"
    assert "--max-wall-time budget (3600 s of wall time)" in view.ended.reason


def test_a_transient_failure_is_retried_on_the_same_plan_with_backoff(tmp_path):
    def reset(folder, plan):
        _observe(folder)
        (folder / "failure.0.json").write_text(json.dumps({
            "exc_type": "ConnectionResetError", "message": "[Errno 104] Connection reset by peer"}))
        return 1

    slept = []
    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", ladder=load_ladder(None))
    runner = Runner(config, launcher=ScriptedWorkers(reset, reset, finish), clock=FakeClock(), sleep=slept.append,
                    environ={})
    assert runner.run() == 0
    view = fold(read_journal(tmp_path / "run" / "journal.jsonl"))
    assert [a.rung for a in view.attempts] == [None, "retry", "retry"]
    assert {a.plan for a in view.attempts} == {view.program_plan}
    assert [s for s in slept if s >= 1] == [5, 10]  # tenacity's exponential wait


def test_transient_failures_that_keep_coming_stop_the_run(tmp_path):
    def reset(folder, plan):
        (folder / "failure.0.json").write_text(json.dumps({"exc_type": "RendezvousTimeoutError", "message": ""}))
        return 1

    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", ladder=load_ladder(None))
    runner = Runner(config, launcher=ScriptedWorkers(*[reset] * 4), clock=FakeClock(), sleep=lambda s: None, environ={})
    assert runner.run() == 3
    view = fold(read_journal(tmp_path / "run" / "journal.jsonl"))
    assert len(view.attempts) == 4 and view.ended.status == "transient"


def test_a_worker_that_reports_one_step_per_look_is_not_taken_for_hung(tmp_path):
    clock = FakeClock()

    class Steady(Handle):
        """Reports one step per poll for 40 polls (200 s, above the 60 s timeout), then finishes."""

        def __init__(self, folder):
            super().__init__(0)
            self.folder = folder
            _observe(folder)

        def poll(self):
            self.polls += 1
            if self.polls > 40:
                return 0
            with open(self.folder / "progress.0.jsonl", "a") as f:
                f.write(json.dumps({"step": self.polls, "max_steps": 40}) + "\n")
            return None

    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", ladder=load_ladder(None),
                       hang_timeout=60, poll_interval=5)
    launcher = lambda spec: Steady(Path(spec.env["OOMLADDER_ATTEMPT_DIR"]))  # noqa: E731
    assert Runner(config, launcher=launcher, clock=clock, sleep=clock.sleep, environ={}).run() == 0


def oom_with_the_model_reported(step, seq_len):
    """A Trainer worker as the adapter reports it: the model's shape, and the batch that failed."""
    from tests.test_foresight import MODEL

    def behaviour(folder, plan):
        (folder / "observed.0.json").write_text(json.dumps({"plan": PROGRAM, "facts": FACTS, "model": MODEL}))
        _steps(folder, step - 1)
        (folder / "failure.0.json").write_text(json.dumps({
            "exc_type": "RuntimeError", "message": CPU_OOM, "step": step - 1, "max_steps": 6, "phase": "train",
            "ts": 1.0, "peak": 999, "batch_shape": [plan.get("per_device_train_batch_size", 16), seq_len]}))
        return 1
    return behaviour


def test_with_the_model_reported_one_oom_takes_every_rung_the_estimate_needs_at_once(tmp_path):
    workers = ScriptedWorkers(oom_with_the_model_reported(3, 512), finish)
    code, view = run(tmp_path, workers)
    assert code == 0 and len(view.attempts) == 2
    decision = view.decisions[0]
    assert " + " in decision.rung and len(decision.rung_indices) >= 2
    assert decision.estimate["after"] <= decision.estimate["capacity"] < decision.estimate["before"]
    assert sum(view.rung_uses.values()) == len(decision.rung_indices)
    assert workers.plans()[1] == {k: v for k, v in decision.plan.to_dict().items() if k in workers.plans()[1]}
    assert view.attempts[1].plan.effective_batch == 16
    assert "int8" in dict(decision.skipped)  # saves megabytes where gigabytes are missing


# --- hostile nights: signals, clocks, disks --------------------------------------------------------------

def stop_run(tmp_path, signals, launcher=None, **options):
    """A run whose first poll's wait brings `signals` (one after another) to the supervisor."""
    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", ladder=load_ladder(None),
                       **options)
    handles, pending = [], list(signals)

    def running(spec):
        handles.append(Stoppable())
        return handles[-1]

    def sleep(seconds):
        if pending:
            runner.request_stop(pending.pop(0))

    runner = Runner(config, launcher=launcher or running, sleep=sleep, environ={})
    return runner.run(), handles, fold(read_journal(tmp_path / "run" / "journal.jsonl"))


class Stoppable(Handle):
    """Runs until stopped; remembers whether it was asked to hurry (a second signal)."""

    def __init__(self):
        super().__init__(None)
        self.hurried = None

    def poll(self):
        return None

    def stop(self, sig=signal.SIGTERM, grace=10.0, hurry=lambda: False):
        self.stopped_with = sig
        self.during_grace()
        self.hurried = hurry()
        return -sig

    def during_grace(self):
        pass


def test_a_closed_terminal_stops_the_run_like_a_scheduler_and_exits_129(tmp_path):
    code, handles, view = stop_run(tmp_path, [signal.SIGHUP])
    assert code == 129 and handles[0].stopped_with == signal.SIGTERM
    assert view.ended.status == "interrupted" and view.attempts[0].status == "interrupted"


@pytest.mark.parametrize("signals, hurried", [(1, False), (2, True)])
def test_a_second_signal_while_the_worker_saves_stops_it_at_once(tmp_path, signals, hurried):
    handles = []

    class Saving(Stoppable):
        def during_grace(self):  # the second Ctrl-C of an impatient person
            for _ in range(signals - 1):
                runner.request_stop(signal.SIGINT)

    def launcher(spec):
        handles.append(Saving())
        return handles[-1]

    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", ladder=load_ladder(None))
    runner = Runner(config, launcher=launcher, sleep=lambda s: runner.request_stop(signal.SIGINT), environ={})
    assert runner.run() == 130 and handles[0].hurried is hurried


@pytest.mark.parametrize("at_once", [1, 2])
def test_a_first_signal_says_the_step_is_saved_first_and_how_to_stop_at_once(tmp_path, at_once):
    """Two quick Ctrl-C presses can reach oomladder as one signal; the line tells the person that another stops it at
    once. Two that arrived as two stop it at once, with nothing to tell."""
    display = FakeDisplay()
    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", ladder=load_ladder(None), grace=30)
    pending = [signal.SIGINT] * at_once

    def sleep(seconds):
        while pending:
            runner.request_stop(pending.pop())

    runner = Runner(config, launcher=lambda spec: Stoppable(), display=display, sleep=sleep, environ={})
    assert runner.run() == 130
    told = [e for e in display.events if e.startswith("SIGINT: stopping attempt 1")]
    if at_once == 1:
        assert told == ["SIGINT: stopping attempt 1; its step in flight is saved first (up to 30 s). Ctrl-C again, "
                        "or a second signal, stops it at once"]
    else:
        assert told == []


def test_a_signal_during_the_backoff_stops_before_the_next_launch(tmp_path):
    def reset(folder, plan):
        (folder / "failure.0.json").write_text(json.dumps({"exc_type": "ConnectionResetError",
                                                           "message": "[Errno 104] Connection reset by peer"}))
        return 1

    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", ladder=load_ladder(None))
    workers = ScriptedWorkers(reset, finish)
    runner = Runner(config, launcher=workers, clock=FakeClock(),
                    sleep=lambda s: runner.request_stop(signal.SIGTERM) if s >= 1 else None, environ={})
    assert runner.run() == 143
    view = fold(read_journal(tmp_path / "run" / "journal.jsonl"))
    assert len(workers.specs) == 1 and len(view.attempts) == 1 and view.ended.status == "interrupted"


def test_a_step_of_the_wall_clock_is_not_taken_for_a_hang_or_a_spent_budget(tmp_path):
    steady, wall = FakeClock(), count(0, 7200)  # NTP (or a suspended laptop) moves the wall clock 2 h a look

    class Slow(Handle):
        def poll(self):
            self.polls += 1
            return 0 if self.polls > 5 else None

    def launcher(spec):
        _observe(Path(spec.env["OOMLADDER_ATTEMPT_DIR"]))
        return Slow(0)

    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", ladder=load_ladder(None),
                       hang_timeout=60, max_wall_time=3600, poll_interval=5)
    code = Runner(config, launcher=launcher, clock=lambda: float(next(wall)), monotonic=steady,
                  sleep=steady.sleep, environ={}).run()
    assert code == 0
    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "jumpy", ladder=load_ladder(None),
                       hang_timeout=60, max_wall_time=3600, poll_interval=5)
    jumpy = Runner(config, launcher=launcher, clock=lambda: float(next(wall)), sleep=steady.sleep, environ={})
    assert jumpy.run() != 0  # the same run timed on the wall clock: what the monotonic clock prevents


def test_a_full_disk_stops_the_worker_and_ends_the_run_in_one_line_with_exit_74(tmp_path):
    class FillsTheDisk(Stoppable):
        def poll(self):
            raise OSError(28, "No space left on device", str(tmp_path / "run" / "journal.jsonl"))

    handles = []

    def launcher(spec):
        handles.append(FillsTheDisk())
        return handles[-1]

    code, _, view = stop_run(tmp_path, [], launcher=launcher)
    assert code == 74 and handles[0].stopped_with == signal.SIGTERM
    assert view.ended.status == "disk_full"
    assert view.ended.reason.startswith(f"the disk holding {tmp_path / 'run' / 'journal.jsonl'} is full")


def test_a_bug_in_oomladder_stops_the_worker_and_is_journaled_before_it_is_raised(tmp_path):
    class Broken(Stoppable):
        def poll(self):
            raise ZeroDivisionError("oops")

    handles = []

    def launcher(spec):
        handles.append(Broken())
        return handles[-1]

    with pytest.raises(ZeroDivisionError):
        stop_run(tmp_path, [], launcher=launcher)
    view = fold(read_journal(tmp_path / "run" / "journal.jsonl"))
    assert handles[0].stopped_with == signal.SIGTERM
    assert view.ended.status == "internal_error" and "ZeroDivisionError: oops" in view.ended.reason


def test_a_console_that_went_away_does_not_take_the_run_with_it(tmp_path):
    """After SIGHUP the terminal is gone and every write to it fails (EIO): the run still stops as asked,
    with its journal and its report."""
    class ClosedTerminal:
        live = False

        def update(self, view):
            raise OSError(5, "Input/output error")

        event = close = update

    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", ladder=load_ladder(None))
    runner = Runner(config, launcher=lambda spec: Stoppable(), display=ClosedTerminal(),
                    sleep=lambda s: runner.request_stop(signal.SIGHUP), environ={})
    assert runner.run() == 129
    assert fold(read_journal(tmp_path / "run" / "journal.jsonl")).ended.status == "interrupted"
    assert (tmp_path / "run" / "report.md").exists()
