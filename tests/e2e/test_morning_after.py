"""The morning after, end to end: one real recovered run (the tiny Llama's real OOM at step 3 under a
1200MiB cap, then halve_batch to the end) with a webhook to tell and TensorBoard as the program's tracker. The
ladder is halve_batch alone: the default ladder's climb is the demo's test (test_recovery.py), and bf16 is
minutes per step on a CPU without bf16 units. What it leaves is read back as a person's tools read it: the page
parsed as HTML, the webhook's requests as the server got them, the event files through TensorBoard's own reader.
In-place recovery is off (`relaunch_env`): this is the morning after a relaunch; tests/e2e/test_in_place.py reads
the one after a step split in place (its report row, message and tracker event)."""

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import pytest

from oomladder.record.history import fold
from oomladder.record.journal import read_journal
from oomladder.views.report import SCHEMA_FILE
from tests.conftest import oomladder_argv
from tests.webhook import Webhook

pytestmark = pytest.mark.e2e
TRAIN_TINY = Path(__file__).resolve().parents[2] / "supervisor" / "demo" / "train_tiny.py"


@pytest.fixture(scope="module")
def night(tmp_path_factory, relaunch_env):
    """The run, once for every test here: its directory, its console output, and what the webhook got."""
    tmp = tmp_path_factory.mktemp("morning")
    (tmp / "halve.yaml").write_text("rungs: [halve_batch]\n")
    with Webhook() as hook:
        run = subprocess.run(
            oomladder_argv("run", "--memory-cap", "1200MiB", "--ladder", str(tmp / "halve.yaml"), "--run-dir",
                           str(tmp / "R"), "--notify", hook.url + "/flag",
                           "--", sys.executable, str(TRAIN_TINY), "--model-dir", str(tmp / "M"), "--output-dir",
                           str(tmp / "O"), "--report-to", "tensorboard"),
            cwd=tmp, env={**relaunch_env, "OOMLADDER_NOTIFY": hook.url + "/environment"}, capture_output=True,
            text=True, timeout=900)
        messages = hook.wait_for(4)
    assert run.returncode == 0, run.stdout + run.stderr
    return tmp, run, messages, hook.url


class Page(HTMLParser):
    """Each element with the ids of the elements it sits in, and the text inside each id'd element."""

    VOID = {"br", "meta", "path", "use", "rect", "circle", "line", "stop", "input", "img"}

    def __init__(self, text):
        super().__init__()
        self.elements, self.open, self.text_in = [], [], {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs, [a.get("id") for _, a in self.open]))
        if tag not in self.VOID:
            self.open.append((tag, attrs))

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), [a.get("id") for _, a in self.open]))

    def handle_endtag(self, tag):
        while self.open and self.open.pop()[0] != tag:
            pass

    def handle_data(self, data):
        for _, attrs in self.open:
            if attrs.get("id"):
                self.text_in[attrs["id"]] = self.text_in.get(attrs["id"], "") + data

    def within(self, tag, ancestor):
        return [attrs for t, attrs, ancestors in self.elements if t == tag and ancestor in ancestors]


def test_the_page_has_both_charts_and_a_row_for_each_attempt(night):
    tmp, _, _, _ = night
    view = fold(read_journal(tmp / "R" / "journal.jsonl"))
    assert len(view.attempts) == 2 and view.attempts[0].failure.is_memory  # a real OOM, then recovered
    page = Page((tmp / "R" / "report.html").read_text())
    assert len(page.within("svg", "memory-chart")) == 1 and len(page.within("svg", "timeline-chart")) == 1
    rows = [a["id"] for a in page.within("tr", "attempts") if a.get("id")]
    assert rows == ["attempt-1", "attempt-2"]
    # The OOM marked where it struck, with the failed allocation: the chart's own text, in its SVG.
    assert "OOM in step 3: " in page.text_in["memory-chart"] and "500 MiB tried" in page.text_in["memory-chart"]
    assert "memory cap 1.2 GiB" in page.text_in["memory-chart"]
    assert "lost to failures" in page.text_in["timeline-chart"] and "3–6 (resumed)" in page.text_in["timeline-chart"]
    assert "halve_batch" in page.text_in["attempt-2"] and "OOM in step 3/6" in page.text_in["attempt-1"]
    assert "per_device_train_batch_size=8" in page.text_in["reproduce"]
    assert not [t for t, _, _ in page.elements if t in ("script", "link", "img", "iframe")]


def test_oomladder_report_prints_the_same_page(night, env):
    tmp, _, _, _ = night
    shown = subprocess.run(oomladder_argv("report", str(tmp / "R"), "--format", "html"), cwd=tmp, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and shown.stdout == (tmp / "R" / "report.html").read_text()


def test_the_real_report_follows_its_schema(night):
    tmp, _, _, _ = night
    report = json.loads((tmp / "R" / "report.json").read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(report)
    assert [len(a["step_log"]) for a in report["attempts"]] == [2, 4]
    assert report["time_lost"]["failures"] > 0 and report["time_lost"]["restarts"] > 0


def test_both_targets_hear_of_the_fallback_and_the_end(night):
    tmp, _, messages, url = night
    by_path = {}
    for m in messages:
        by_path.setdefault(m["path"], []).append(m)
    assert set(by_path) == {"/hook/flag", "/hook/environment"}
    for got in by_path.values():
        assert [m["title"] for m in got] == ["oomladder: attempt 1 ran out of memory; next: halve_batch",
                                             "oomladder: training finished"]
        assert "Steps done: 2 of 6." in got[0]["message"] and "per_device_train_batch_size 16→8" in got[0]["message"]
        assert "Steps done: 6 of 6." in got[1]["message"]
        assert f"Report: {tmp / 'R' / 'report.html'}" in got[1]["message"]
    started = read_journal(tmp / "R" / "journal.jsonl")[0]
    # The journal names the targets by scheme and host, for resume to say which it lost; never a URL.
    assert started["notify_targets"] == ["json://127.0.0.1", "json://127.0.0.1"]
    assert "/hook/flag" not in (tmp / "R" / "journal.jsonl").read_text()


def test_the_programs_tensorboard_log_shows_oomladders_events(night):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tmp, _, _, _ = night
    scalars, texts = {}, {}
    for folder in sorted((tmp / "O" / "runs").iterdir()):  # one run folder per process, as the program writes them
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
        for tag in events.Tags()["tensors"]:
            texts.setdefault(tag, []).extend((e.step, e.tensor_proto.string_val[0].decode())
                                             for e in events.Tensors(tag))
    # Each attempt at the step it began from: attempt 1 at step 0, attempt 2 resumed after step 2.
    assert sorted(scalars["train/oomladder/attempt"]) == [(0, 1.0), (2, 2.0)]
    assert sorted(scalars["train/oomladder/per_device_train_batch_size"]) == [(0, 16.0), (2, 8.0)]
    assert sorted(scalars["train/oomladder/gradient_accumulation_steps"]) == [(0, 1.0), (2, 2.0)]
    (step1, first), (step2, second) = sorted(texts["train/oomladder/rung/text_summary"])
    assert (step1, first) == (0, "attempt 1 from step 0: start: the program's own settings")
    assert step2 == 2 and second.startswith("attempt 2 from step 2: halve_batch: ")
    assert "accumulation doubles so the effective batch stays 16" in second
    assert "train/loss" in scalars  # the program's own metrics, in the same files


def test_the_console_ends_with_each_peak_against_the_cap(night):
    _, run, _, _ = night
    assert "Peak memory against the memory cap, 1.2 GiB" in run.stdout
    assert "OOM, 500 MiB more tried" in run.stdout and "report.html" in run.stdout
