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
from oomladder.run.notify import Notifier, check_targets, private, scrub, targets
from oomladder.views.messages import Message, end_message, fallback_message, whereabouts
from tests.conftest import FakeDisplay
from tests.test_report_html import night
from tests.test_runner import ScriptedWorkers, bug, finish, oom_at, run
from tests.webhook import Webhook, closed_port


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

def test_targets_come_from_the_flag_and_the_environment_once_each():
    environ = {"OOMLADDER_NOTIFY": " ntfy://night-runs, json://hooks.local/a  json://hooks.local/b,,"}
    assert targets(["json://hooks.local/a"], environ) == ("json://hooks.local/a", "ntfy://night-runs",
                                                          "json://hooks.local/b")
    assert targets([], {}) == ()


def test_a_target_apprise_does_not_know_is_bad_input_named_without_its_secrets():
    with pytest.raises(UsageError, match="--notify 'nope://…' is not a notification URL Apprise knows"):
        check_targets(["nope://x"], {})
    with pytest.raises(UsageError, match=r"\$OOMLADDER_NOTIFY 'nope://hooks.example.com' ") as raised:
        check_targets(["nope://user:pa55word@hooks.example.com/hook/T0KEN"], {
            "OOMLADDER_NOTIFY": "nope://user:pa55word@hooks.example.com/hook/T0KEN"})
    assert "pa55word" not in str(raised.value) and "T0KEN" not in str(raised.value)


def test_the_command_line_refuses_it_in_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--notify", "nope://me:pa55word@x/T0KEN", "--run-dir", str(tmp_path / "r"), "--",
                 sys.executable, "-c", "pass"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a notification URL" in err and not (tmp_path / "r").exists()
    assert "pa55word" not in err and "T0KEN" not in err


@pytest.mark.parametrize("url, shown", [
    ("json://hooks.example.com/hook/T0KEN", "json://hooks.example.com"),
    ("json://user:pa55word@hooks.example.com:8443/hook?token=T0KEN", "json://hooks.example.com"),
    ("mailto://me:pa55word@gmail.com", "mailto://gmail.com"),
    ("json://127.0.0.1:8080/hook/T0KEN", "json://127.0.0.1"),
    ("slack://T0KENA/T0KENB/T0KENC/#channel", "slack://…"),          # Slack's, Discord's, Telegram's "host" is a token
    ("tgram://123456789:AAH0KEN/987", "tgram://…"),
    ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", "discord://…"),
    ("not a url", "a notification target"),
])
def test_a_target_is_shown_as_its_scheme_and_host_alone(url, shown):
    assert private(url) == shown


def test_an_error_of_apprises_is_scrubbed_of_the_urls_parts():
    url = "json://me:pa55word@hooks.example.com/hook/T0KEN-1234"
    said = "Failed to send JSON notification to http://me:pa55word@hooks.example.com/hook/T0KEN-1234: 500 (T0KEN-1234)"
    scrubbed = scrub(said, url)
    assert "T0KEN" not in scrubbed and "pa55word" not in scrubbed and "http://hooks.example.com" in scrubbed


def test_the_journal_keeps_the_targets_names_and_the_config_files_path_never_a_url(tmp_path, monkeypatch):
    monkeypatch.delenv("OOMLADDER_NOTIFY", raising=False)
    with Webhook() as hook:
        config = tmp_path / "targets.txt"
        config.write_text(hook.secret_url + "\n")
        code, _ = run(tmp_path, ScriptedWorkers(bug), notify=("json://hooks.example.com/hook/T0KEN",),
                      notify_config=str(config))
        assert len(hook.wait_for(1)) == 1 and hook.messages[0]["path"] == "/hook/T0KEN-abcdef"
    journal = (tmp_path / "run" / "journal.jsonl").read_text()
    started = next(r for r in read_journal(tmp_path / "run" / "journal.jsonl") if r["type"] == "run_started")
    assert code == 3 and started["notify_targets"] == ["json://hooks.example.com"]
    assert started["notify_config"] == str(config) and "T0KEN" not in journal and "s3cret" not in journal


def test_resume_reads_the_config_file_and_the_environment_again_and_names_a_target_it_lost(tmp_path, monkeypatch,
                                                                                           capsys):
    monkeypatch.delenv("OOMLADDER_NOTIFY", raising=False)
    config = tmp_path / "targets.txt"
    config.write_text("json://hooks.example.com/from/file\n")
    run(tmp_path, ScriptedWorkers(bug), notify=("json://other.example.com/hook/T0KEN",), notify_config=str(config))
    monkeypatch.setenv("OOMLADDER_NOTIFY", "ntfy://ntfy.example.com/another-topic")
    resumed = resume_config(tmp_path / "run")
    assert resumed.notify == ("ntfy://ntfy.example.com/another-topic",) and resumed.notify_config == str(config)
    warning = capsys.readouterr().err
    assert "this run notified json://other.example.com, which is not given now" in warning and "T0KEN" not in warning


def test_a_config_file_that_holds_no_target_is_bad_input(tmp_path):
    (tmp_path / "empty.txt").write_text("# nothing here\n")
    with pytest.raises(UsageError, match="holds no notification target Apprise can read"):
        check_targets([], {}, tmp_path / "empty.txt")
    with pytest.raises(UsageError, match="cannot be read"):
        check_targets([], {}, tmp_path / "missing.txt")


def test_a_notify_flag_works_and_warns_that_ps_shows_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Webhook() as hook:
        assert main(["run", "--notify", hook.url, "--run-dir", str(tmp_path / "r"), "--", sys.executable, "-c",
                     "pass"]) == 0
        assert hook.wait_for(1)
    assert "--notify puts its URL in the process list" in capsys.readouterr().err


def test_no_secret_reaches_the_worker_its_argv_or_anything_the_run_writes(tmp_path, monkeypatch, capsys):
    """The worker does not need the targets: $OOMLADDER_NOTIFY stays with the supervisor, and a target that
    fails is named without its secret on the console, in the journal and in every report."""
    monkeypatch.chdir(tmp_path)
    dead = f"json://oomladder:s3cret@127.0.0.1:{closed_port()}/hook/T0KEN-abcdef"
    monkeypatch.setenv("OOMLADDER_NOTIFY", dead)
    seen = tmp_path / "seen"
    program = ("import os, sys; open(sys.argv[1], 'w').write(repr((sys.argv, dict(os.environ), "
               "open('/proc/self/cmdline', 'rb').read())))")
    assert main(["run", "--run-dir", str(tmp_path / "r"), "--", sys.executable, "-c", program, str(seen)]) == 0
    out = capsys.readouterr()
    assert "notification to json://127.0.0.1 failed" in out.out + out.err
    for text in (seen.read_text(), out.out, out.err, *(p.read_text() for p in (tmp_path / "r").rglob("*")
                                                       if p.is_file() and p.suffix in (".jsonl", ".json", ".md",
                                                                                       ".html", ".log"))):
        assert "s3cret" not in text and "T0KEN" not in text


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
    assert all(w["target"] == "json://127.0.0.1" for w in warnings)


def test_a_failed_notification_is_one_line_on_the_console(tmp_path):
    display = FakeDisplay()
    with Journal(tmp_path / "journal.jsonl") as journal:
        notifier = Notifier([f"json://127.0.0.1:{closed_port()}/x"], journal, display, tmp_path, host="h")
        notifier.send(Message("t", "b", "info"))
    line, = display.events
    assert line.startswith("notification to json://127.0.0.1 failed: A Connection error occurred")
    assert "\n" not in line


def test_a_service_that_answers_with_an_error_is_a_failed_notification(tmp_path):
    display = FakeDisplay()
    with Webhook(status=500) as hook, Journal(tmp_path / "journal.jsonl") as journal:
        Notifier([hook.url], journal, display, tmp_path, host="h").send(Message("t", "b", "info"))
    assert len(hook.messages) == 1 and "500" in display.events[0]


def test_without_targets_nothing_is_sent_and_nothing_is_journaled(tmp_path):
    code, _ = run(tmp_path, ScriptedWorkers(oom_at(3), finish))
    records = read_journal(tmp_path / "run" / "journal.jsonl")
    assert code == 0 and not any(k.startswith("notify") for k in records[0]) and not notify_warnings(records)


def test_without_apprise_notify_is_one_line_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "apprise", None)
    with pytest.raises(UsageError, match=r"^--notify needs Apprise: pip install apprise$"):
        check_targets(["json://127.0.0.1/x"], {})
    check_targets([], {})  # no targets, nothing needed
