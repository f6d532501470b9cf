"""--notify: the message text, the targets from the flag, the environment and the journal, delivery
through Apprise's json:// target to a real HTTP server on this machine, and a target that cannot be
reached, which is journaled and shown and changes nothing else."""

import json
import sys
from pathlib import Path

import pytest

from oomladder.cli import main
from oomladder.cli.commands import resume_config
from oomladder.errors import UsageError
from oomladder.record.history import fold
from oomladder.record.journal import Journal, read_journal
from oomladder.run.notify import Notifier, check_targets, targets
from oomladder.views.messages import Message, end_message, fallback_message, whereabouts
from tests.test_report_html import night
from tests.test_runner import ScriptedWorkers, bug, finish, oom_at, run
from tests.webhook import Webhook, closed_port


class Events:
    """A display that keeps the lines the run shows."""

    live = False

    def __init__(self):
        self.lines = []

    def update(self, view):
        pass

    def event(self, text):
        self.lines.append(text)

    def close(self, view):
        pass


# --- what the messages say ----------------------------------------------------------------------------------

def test_a_fallback_says_what_died_what_comes_next_and_how_far_the_run_got():
    records = [r for r in night() if r["ts"] <= night()[7]["ts"]]  # up to the decision after attempt 1's OOM
    records[7] = {**records[7], "changes": "per_device_train_batch_size 16→8, gradient_accumulation_steps 1→2"}
    view = fold(records)
    message = fallback_message(view, 1, whereabouts(view, Path("/runs/night"), "gpu-7"))
    assert message.title == "oomladder: attempt 1 ran out of memory; next: bf16 + halve_batch"
    assert message.body.splitlines() == [
        "OOM in step 3/6: CPU allocator out of memory: tried to allocate 500 MiB.",
        "Next: bf16 + halve_batch, changing per_device_train_batch_size 16→8, gradient_accumulation_steps 1→2.",
        "Steps done: 2 of 6.",
        "Run: python train.py, on gpu-7, in /runs/night"]
    assert message.level == "warning"


def test_the_end_says_the_outcome_the_steps_the_final_plan_and_where_the_report_is():
    view = fold(night())
    message = end_message(view, Path("/runs/night/report.html"), "Run: python train.py, on gpu-7, in /runs/night")
    assert message.title == "oomladder: training finished" and message.level == "success"
    assert message.body.splitlines() == [
        "every step ran once; attempt 2 finished after 1 out-of-memory error.",
        "Steps done: 6 of 6. Attempts: 2, 1 out of memory.",
        "Final plan: per_device_train_batch_size 16→8, gradient_accumulation_steps 1→2, precision fp32→bf16.",
        "Report: /runs/night/report.html",
        "Run: python train.py, on gpu-7, in /runs/night"]


@pytest.mark.parametrize("status, title", [
    ("ladder_exhausted", "oomladder: out of memory, ladder exhausted"),
    ("not_memory", "oomladder: stopped by a bug (no memory setting fixes it)"),
    ("interrupted", "oomladder: interrupted"),
])
def test_a_run_that_stopped_says_why_in_its_title(status, title):
    records = night()[:7] + [{"type": "run_ended", "ts": night()[6]["ts"], "status": status, "exit_code": 4,
                              "reason": "attempt 1 ran out of memory"}]
    message = end_message(fold(records), Path("r/report.html"), "Run: x")
    assert message.title == title and message.level == "failure"
    assert "Attempt 1: OOM in step 3/6." in message.body and "Steps done: 2 of 6." in message.body
    assert "Final plan: the program’s own settings." in message.body


def test_a_long_command_is_cut_short():
    records = night(command=("python", "train.py", "--x", "y" * 400))
    assert len(whereabouts(fold(records), Path("d"), "h")) < 200


# --- targets --------------------------------------------------------------------------------------------------

def test_targets_come_from_the_journal_the_flag_and_the_environment_once_each():
    environ = {"OOMLADDER_NOTIFY": " ntfy://night-runs, json://hooks.local/a  json://hooks.local/b,,"}
    assert targets(["json://hooks.local/a"], environ, kept=["tgram://bot/1"]) == (
        "tgram://bot/1", "json://hooks.local/a", "ntfy://night-runs", "json://hooks.local/b")
    assert targets([], {}) == ()


def test_a_target_apprise_does_not_know_is_bad_input():
    with pytest.raises(UsageError, match="--notify 'nope://x' is not a notification URL Apprise knows"):
        check_targets(["nope://x"], {})
    with pytest.raises(UsageError, match=r"\$OOMLADDER_NOTIFY 'nope://y'"):
        check_targets(["nope://y"], {"OOMLADDER_NOTIFY": "nope://y"})


def test_the_command_line_refuses_it_in_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--notify", "nope://x", "--run-dir", str(tmp_path / "r"), "--", sys.executable, "-c",
                 "pass"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a notification URL" in err and not (tmp_path / "r").exists()


def test_resume_keeps_the_runs_targets(tmp_path, monkeypatch):
    monkeypatch.delenv("OOMLADDER_NOTIFY", raising=False)
    with Webhook() as hook:
        code, _ = run(tmp_path, ScriptedWorkers(bug), notify=(hook.url,))
        started = next(r for r in read_journal(tmp_path / "run" / "journal.jsonl") if r["type"] == "run_started")
        assert code == 3 and started["notify"] == [hook.url]
        monkeypatch.setenv("OOMLADDER_NOTIFY", "ntfy://another-topic")
        assert resume_config(tmp_path / "run").notify == (hook.url, "ntfy://another-topic")


# --- sending ----------------------------------------------------------------------------------------------------

def test_a_run_sends_each_fallback_and_its_end_to_a_webhook(tmp_path):
    with Webhook() as hook:
        code, view = run(tmp_path, ScriptedWorkers(oom_at(3), oom_at(3), finish), notify=(hook.url,))
        messages = hook.wait_for(3)
    assert code == 0 and len(view.attempts) == 3
    assert [m["title"] for m in messages] == ["oomladder: attempt 1 ran out of memory; next: int8",
                                              "oomladder: attempt 2 ran out of memory; next: halve_batch",
                                              "oomladder: training finished"]
    assert [m["type"] for m in messages] == ["warning", "warning", "success"]
    assert f"Report: {tmp_path / 'run' / 'report.html'}" in messages[-1]["message"]
    assert not notify_warnings(read_journal(tmp_path / "run" / "journal.jsonl"))


def notify_warnings(records):
    # Scripted workers also draw the warning that no adapter reached them: only the notifier's count here.
    return [r for r in records if r["type"] == "warning" and r.get("about") == "notify"]


def test_a_target_that_cannot_be_reached_is_journaled_and_shown_and_the_run_goes_on(tmp_path):
    dead = f"json://oomladder:s3cret@127.0.0.1:{closed_port()}/hook"
    with Webhook() as hook:
        code, view = run(tmp_path, ScriptedWorkers(oom_at(3), oom_at(3), finish), notify=(dead, hook.url))
        assert len(hook.wait_for(3)) == 3  # the live target still hears everything
    assert code == 0 and view.status == "finished" and len(view.attempts) == 3
    warnings = notify_warnings(read_journal(tmp_path / "run" / "journal.jsonl"))
    assert len(warnings) == 3
    assert warnings[0]["title"].startswith("oomladder: attempt 1 ran out of memory")
    assert warnings[-1]["title"] == "oomladder: training finished"
    assert all("Connection error" in w["text"] for w in warnings)
    assert "s3cret" not in json.dumps(warnings)  # the journal's warning names the target without its secret


def test_a_failed_notification_is_one_line_on_the_console(tmp_path):
    events = Events()
    with Journal(tmp_path / "journal.jsonl") as journal:
        notifier = Notifier([f"json://127.0.0.1:{closed_port()}/x"], journal, events, tmp_path, host="h")
        notifier.send(Message("t", "b", "info"))
    line, = events.lines
    assert line.startswith("notification to json://127.0.0.1:") and "failed: A Connection error occurred" in line
    assert "\n" not in line


def test_a_service_that_answers_with_an_error_is_a_failed_notification(tmp_path):
    events = Events()
    with Webhook(status=500) as hook, Journal(tmp_path / "journal.jsonl") as journal:
        Notifier([hook.url], journal, events, tmp_path, host="h").send(Message("t", "b", "info"))
    assert len(hook.messages) == 1 and "500" in events.lines[0]


def test_without_targets_nothing_is_sent_and_nothing_is_journaled(tmp_path):
    code, _ = run(tmp_path, ScriptedWorkers(oom_at(3), finish))
    records = read_journal(tmp_path / "run" / "journal.jsonl")
    assert code == 0 and "notify" not in records[0] and not notify_warnings(records)


def test_without_apprise_notify_is_one_line_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "apprise", None)
    with pytest.raises(UsageError, match=r"^--notify needs Apprise: pip install apprise$"):
        check_targets(["json://127.0.0.1/x"], {})
    check_targets([], {})  # no targets, nothing needed
