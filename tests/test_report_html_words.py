"""report.html is read by a person: its prose names no identifier of the journal or of oomladder's code (how a
peak was measured, a failure's kind), only words. Settings the program itself passes (TrainingArguments'
names), the ladder's rung names and the commands shown as code are what a person types, so they stay."""

import re
from html.parser import HTMLParser

from oomladder.ladder import load_ladder
from oomladder.plan import FIELD_NAMES
from oomladder.views.html import render_html
from tests.test_report_html import night, report_of

TYPED = set(FIELD_NAMES) | {rung.name for rung in load_ladder(None).rungs}


class Prose(HTMLParser):
    """The page's text outside code, styles and charts."""

    def __init__(self, page):
        super().__init__()
        self.skipping, self.words = [], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag in ("code", "pre", "style", "svg", "title"):
            self.skipping.append(tag)

    def handle_endtag(self, tag):
        if self.skipping and self.skipping[-1] == tag:
            self.skipping.pop()

    def handle_data(self, data):
        if not self.skipping:
            self.words.append(data)

    @property
    def text(self):
        return " ".join(" ".join(self.words).split())


def identifiers(text):
    return set(re.findall(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b", text)) - TYPED


def test_the_page_says_how_the_peak_was_measured_and_what_each_failure_was_in_words():
    text = Prose(render_html(report_of(night()))).text
    assert identifiers(text) == set()
    assert "The peak measured is the address space the program grew by after its imports" in text
    assert "died: out of memory (PyTorch's CPU allocator): CPU allocator out of memory" in text


def test_a_failure_of_any_kind_reads_as_words():
    records = night()
    records[6] = {**records[6], "peak_measure": "cuda_max_allocated",
                  "failure": {**records[6]["failure"], "kind": "launch_failed", "memory": None,
                              "summary": "cannot start 'trian.py': No such file or directory"}}
    text = Prose(render_html(report_of(records))).text
    assert identifiers(text) == set()
    assert "died: the command could not be started: cannot start" in text
    assert "launch failed in step 3/6" in text  # the attempts table's status
