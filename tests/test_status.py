"""The statuses every layer shares (oomladder/status.py) read as their bare text wherever text is made of them, so
the journal, the report and the messages say what they said when statuses were strings."""

import json

import pytest

from oomladder.record import schema
from oomladder.status import AttemptOutcome, InPlaceOutcome, RunStatus


@pytest.mark.parametrize("status", [RunStatus.LADDER_EXHAUSTED, AttemptOutcome.FAILED, InPlaceOutcome.SPLIT])
def test_a_status_reads_as_its_value_in_every_kind_of_text(status):
    value = status.value
    assert str(status) == value and f"{status}" == value and "%s" % status == value and format(status) == value
    assert f"{status:>20}" == f"{value:>20}"
    assert json.dumps({"status": status, status: 1}) == json.dumps({"status": value, value: 1})
    assert status == value and {value: "found"}[status] == "found"  # a string from an old journal is the same key


def test_the_journal_takes_only_the_statuses_of_an_end():
    assert set(schema.RUN_STATUSES) == {s.value for s in RunStatus} - {"running", "not started"}
    assert set(schema.ATTEMPT_OUTCOMES) == {"finished", "failed", "interrupted"}
    assert not RunStatus.RUNNING.ended and not RunStatus.NOT_STARTED.ended and RunStatus.HANG.ended
    assert not AttemptOutcome.RUNNING.ended and AttemptOutcome.INTERRUPTED.ended
