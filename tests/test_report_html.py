"""report.html and what its charts show: the chart data from a folded journal, the page parsed as HTML
(two inline SVG charts, a row per attempt, nothing fetched from anywhere), and text from workers and
users kept inert however hostile. The real run's page is tests/e2e/test_morning_after.py's."""

import json
import sys
from html.parser import HTMLParser

import jsonschema
import pytest

from oomladder.classify import Kind
from oomladder.record.history import fold
from oomladder.status import RunStatus
from oomladder.views.charts import memory_chart, timeline_chart
from oomladder.views.html import render_html
from oomladder.views.report import SCHEMA_FILE, build_report, render_markdown, write_reports

MiB = 2**20
T0 = 1_800_000_000.0
PLAN = {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1, "precision": "fp32",
        "load_dtype": "float32", "quantization": "none", "gradient_checkpointing": False}


def night(summary="CPU allocator out of memory: tried to allocate 500 MiB", rung="bf16 + halve_batch",
          reason="half the activations per micro-batch", command=("python", "train.py")):
    """A night in journal records: attempt 1 runs steps 1-2 and dies of an OOM in step 3; attempt 2 starts,
    resumes from the end of step 2, and runs steps 3-6. Seconds from T0."""
    def at(seconds):
        return T0 + seconds
    step = {"type": "progress", "executed": True, "max_steps": 6, "phase": "train",
            "peak_measure": "address_space_over_baseline"}
    return [
        {"type": "run_started", "ts": at(0), "command": list(command), "memory_cap": 1200 * MiB,
         "ladder": {"source": "default ladder (default.yaml)"}},
        {"type": "attempt_started", "ts": at(0), "attempt": 1, "rung": None, "reason": "", "plan": {},
         "command": list(command)},
        {"type": "observed", "ts": at(4), "attempt": 1, "plan": PLAN, "facts": {"device": "cpu"}},
        {"type": "progress", "ts": at(5), "attempt": 1, "began_at": 0, "max_steps": 6},
        {**step, "ts": at(9), "attempt": 1, "step": 1, "peak": 360 * MiB},
        {**step, "ts": at(13), "attempt": 1, "step": 2, "peak": 364 * MiB},
        {"type": "attempt_ended", "ts": at(20), "attempt": 1, "outcome": "failed", "exit_code": 1, "step": 2,
         "max_steps": 6, "peak": 906 * MiB, "peak_measure": "address_space_over_baseline",
         "failure": {"kind": "cpu_oom", "memory": "device", "summary": summary, "phase": "train", "step": 2,
                     "numbers": {"tried_to_allocate": 500 * MiB}}},
        {"type": "decision", "ts": at(20), "attempt": 1, "rung": rung, "rung_index": 1, "reason": reason,
         "skipped": [["int8", "would add 34 MiB"]],
         "plan": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "precision": "bf16"}},
        {"type": "attempt_started", "ts": at(21), "attempt": 2, "rung": rung, "reason": reason,
         "plan": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "precision": "bf16"},
         "command": list(command), "resume_from": {"path": "/r/checkpoints/emergency-step-2", "step": 2}},
        {"type": "progress", "ts": at(26), "attempt": 2, "began_at": 2, "max_steps": 6},
        *({**step, "ts": at(26 + 10 * (n - 2)), "attempt": 2, "step": n, "peak": (920 + n) * MiB} for n in range(3, 7)),
        {"type": "attempt_ended", "ts": at(67), "attempt": 2, "outcome": "finished", "exit_code": 0, "step": 6,
         "max_steps": 6},
        {"type": "run_ended", "ts": at(67), "status": "finished", "exit_code": 0,
         "reason": "every step ran once; attempt 2 finished after 1 out-of-memory error"},
    ]


def report_of(records):
    return build_report(fold(records))


class Page(HTMLParser):
    """The parts of a page the tests look at: its elements, attributes and text."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.stack, self.rows, self.texts, self.attributes = [], [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs), tuple(self.stack)))
        self.attributes += attrs
        if tag == "tr" and dict(attrs).get("id", "").startswith("attempt-"):
            self.rows.append(dict(attrs)["id"])
        if tag not in ("br", "meta", "path", "use", "rect", "stop", "circle", "line"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.stack:
            while self.stack.pop() != tag:
                pass

    def handle_data(self, data):
        self.texts.append(data)

    def inside(self, tag, ancestor_id):
        """The `tag` elements inside the element whose id is `ancestor_id`."""
        ids = [a.get("id") for t, a, _ in self.tags]
        at = ids.index(ancestor_id)
        ancestor = self.tags[at]
        depth = len(ancestor[2])
        found = []
        for t, a, stack in self.tags[at + 1:]:
            if len(stack) <= depth:
                break
            if t == tag:
                found.append(a)
        return found

    @property
    def text(self):
        return "".join(self.texts)


# --- what the charts show -----------------------------------------------------------------------------

def test_the_memory_chart_draws_each_attempts_steps_against_the_cap_and_the_oom_where_it_struck():
    chart = memory_chart(report_of(night()))
    first, second = chart.lines
    assert (first.steps, first.peaks) == ([1, 2], [360 * MiB, 364 * MiB])
    assert (second.steps, second.peaks) == ([3, 4, 5, 6], [923 * MiB, 924 * MiB, 925 * MiB, 926 * MiB])
    assert (first.label, second.label) == ("1 start", "2 bf16 + halve_batch")
    assert (chart.limit, chart.limit_label) == (1200 * MiB, "memory cap 1.2 GiB")
    oom, = chart.ooms
    # It struck in step 3 (the failure's last whole step is 2): the peak before it, and the failed allocation on top.
    assert (oom.attempt, oom.step, oom.peak, oom.tried, oom.reached) == (1, 3, 906 * MiB, 500 * MiB, 1406 * MiB)
    assert chart.by_step


def test_without_a_cap_the_line_is_the_devices_memory_and_an_oom_in_evaluation_is_at_its_step():
    records = night()
    records[0] = {**records[0], "memory_cap": None}
    records[2] = {**records[2], "facts": {"device": "cuda", "device_memory": 16 * 2**30}}
    records[6]["failure"] = {**records[6]["failure"], "phase": "eval"}
    chart = memory_chart(report_of(records))
    assert (chart.limit, chart.limit_label) == (16 * 2**30, "device memory 16.0 GiB")
    assert (chart.ooms[0].step, chart.ooms[0].in_evaluation) == (2, True)


def test_a_program_that_reports_no_steps_gets_one_bar_per_attempt():
    records = [r for r in night() if r["type"] != "progress"]
    chart = memory_chart(report_of(records))
    assert not chart.by_step and chart.peaks == {1: 906 * MiB, 2: None}
    page = Page(render_html(report_of(records)))
    assert len(page.inside("svg", "memory-chart")) == 1 and "attempt (the program reported no steps)" in page.text


def test_the_timeline_puts_each_attempt_on_the_wall_clock_with_its_steps_and_what_the_failure_cost():
    report = report_of(night())
    # Lost to the failure: attempt 1 after its last whole step (13 s) to its death (20 s). Lost to the restart:
    # the gap between the attempts (1 s) and attempt 2's start-up until its training began (5 s).
    assert report["time_lost"] == {"failures": 7.0, "restarts": 6.0}
    chart = timeline_chart(report)
    first, second = chart.lanes
    assert [(s.kind, s.start, s.end) for s in first.spans] == [("start-up", 0, 5), ("training", 5, 13), ("lost", 13,
                                                                                                         20)]
    assert [(s.kind, s.start, s.end) for s in second.spans] == [("start-up", 21, 26), ("training", 26, 67)]
    assert first.steps == [(1, 9.0), (2, 13.0)] and [s for s, _ in second.steps] == [3, 4, 5, 6]
    assert second.steps_text == "3–6 (resumed)"
    assert (chart.total, chart.lost_to_failures, chart.lost_to_restarts) == (67.0, 7.0, 6.0)


def test_an_attempt_that_died_before_its_first_step_lost_all_its_training_time():
    records = [r for r in night() if not (r.get("attempt") == 1 and r.get("executed"))]
    report = report_of(records)
    assert report["time_lost"]["failures"] == 15.0  # from the start of its training (5 s) to its death (20 s)
    assert [s.kind for s in timeline_chart(report).lanes[0].spans] == ["start-up", "lost"]


# --- the page --------------------------------------------------------------------------------------------

def test_the_page_has_both_charts_inline_and_a_row_for_each_attempt():
    page = Page(render_html(report_of(night())))
    assert len(page.inside("svg", "memory-chart")) == 1 and len(page.inside("svg", "timeline-chart")) == 1
    assert page.rows == ["attempt-1", "attempt-2"]
    assert "OOM in step 3: 906 MiB + 500 MiB tried" in page.text  # the chart's own text, kept as text
    assert "Training finished." in page.text and "half the activations per micro-batch" in page.text
    assert "TrainingArguments(..., per_device_train_batch_size=8, gradient_accumulation_steps=2" in page.text
    assert "skipped: int8 (would add 34 MiB)" in page.text


def test_the_page_fetches_nothing_and_runs_nothing():
    page = Page(render_html(report_of(night())))
    tags = {t for t, _, _ in page.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed", "image", "foreignobject"}
    references = [v for k, v in page.attributes if k in ("href", "src", "xlink:href", "action")]
    assert references and all(v.startswith("#") for v in references)  # the charts' own markers, nothing outside
    csp = next(a["content"] for t, a,
               _ in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert csp.startswith("default-src 'none'") and "script" not in csp


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_text_from_workers_and_users_stays_text_in_the_page():
    report = report_of(night(summary=f"ValueError: {HOSTILE}", rung=f"halve{HOSTILE}", reason=f"because {HOSTILE}",
                             command=("python", "train.py", HOSTILE)))
    text = render_html(report)
    page = Page(text)
    assert not {"script", "img"} & {t for t, _, _ in page.tags}
    assert not [k for k, _ in page.attributes if k.startswith("on")]
    # Every hostile string is still there for a person to read, as text: the rung in the table, the chart's
    # legend and the timeline, the failure, the reason and the command.
    assert page.text.count(HOSTILE) >= 6
    assert "&lt;script&gt;" in text


def test_warnings_and_a_damaged_journal_are_on_the_page_and_kept_as_text():
    records = night()
    records.insert(3, {"type": "warning", "ts": T0 + 4, "attempt": 1, "about": "adapter",
                       "text": f"no adapter reached {HOSTILE}"})
    report = report_of(records)
    report["journal"] = {"unreadable_lines": [7], "malformed_records": 1}
    page = Page(render_html(report))
    assert page.inside("li", "warnings") and f"no adapter reached {HOSTILE}" in page.text
    assert "The journal is damaged: lines that are not records: 7; records that could not be read: 1" in page.text
    assert "warnings" not in {a.get("id") for _, a, _ in Page(render_html(report_of(night()))).tags}


def test_a_rung_named_like_mathematics_is_drawn_as_it_is_written():
    page = Page(render_html(report_of(night(rung="$1 & $2 _x^2_"))))
    assert "2 $1 & $2 _x^2_" in page.text  # matplotlib would otherwise typeset it (or fail on it)


def test_write_reports_leaves_the_page_beside_the_markdown_and_the_json(tmp_path):
    report = write_reports(tmp_path, fold(night()))
    assert (tmp_path / "report.html").read_text() == render_html(report)
    assert (tmp_path / "report.md").read_text() == render_markdown(report)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))


# --- the JSON report's schema ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_reports_follow_their_schema(validator):
    running = [r for r in night() if r["ts"] < T0 + 30]
    bug = night(summary="ValueError: bad data")[:7]
    bug[6] = {**bug[6], "failure": {"kind": "error", "memory": None, "summary": "ValueError: bad data", "step": 2,
                                    "phase": "train", "numbers": {}, "rank": None}}
    warned = night()
    warned.insert(3, {"type": "warning", "ts": T0 + 4, "attempt": 1, "about": "adapter", "text": "no adapter"})
    for records in (night(), running, bug, night()[:1], warned):
        validator.validate(json.loads(json.dumps(report_of(records))))


def test_the_schema_says_what_a_report_may_not_be(validator):
    report = json.loads(json.dumps(report_of(night())))
    report["attempts"][0]["step_log"][0]["peak"] = "a lot"
    report["surprise"] = 1
    errors = {e.message for e in validator.iter_errors(report)}
    assert any("'a lot' is not of type" in m for m in errors) and any("surprise" in m for m in errors)


def test_the_schema_knows_every_status_and_failure_kind():
    schema = json.loads(SCHEMA_FILE.read_text())
    assert set(schema["properties"]["status"]["enum"]) == {s.value for s in RunStatus}
    assert set(schema["$defs"]["failure"]["properties"]["kind"]["enum"]) == {k.value for k in Kind}
    assert schema["properties"]["schema"]["const"] == report_of(night())["schema"]


# --- without matplotlib ----------------------------------------------------------------------------------

def test_without_matplotlib_the_page_says_what_to_install_in_place_of_each_chart(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an environment without it imports
    page = Page(render_html(report_of(night())))
    assert page.text.count("the charts need matplotlib: pip install matplotlib") == 2
    assert page.rows == ["attempt-1", "attempt-2"] and not page.inside("svg", "memory-chart")


def test_the_final_plan_says_what_it_is_expected_to_cost_against_the_programs_own(validator):
    """The ladder is journaled with each rung's stated cost: bf16 (~0 %) and one halving (+10 %) cost about a
    tenth more time per step. A journal from before rungs had costs says nothing of it."""
    from oomladder.ladder import load_ladder
    records = night()
    records[0] = {**records[0], "ladder": load_ladder().to_dict()}
    report = report_of(records)
    cost = report["expected_slowdown"]
    assert round(cost["share"], 2) == 0.10 and cost["depends_on"] == []
    assert [part.split(":")[0] for part in cost["parts"]] == ["bf16", "halve_batch"]
    validator.validate(json.loads(json.dumps(report)))
    md = render_markdown(report)
    assert "| expected time per step | the program's own | **+10 %** |" in md
    assert "Expected cost of the final plan: about +10 % time per step" in md
    page = render_html(report)
    assert ("<tr><td>expected time per step</td><td>the program's own</td><td><strong>+10 %</strong></td></tr>"
            in page)
    assert report_of(night())["expected_slowdown"] is None
