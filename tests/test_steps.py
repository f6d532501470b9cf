"""Observed step accounting: which optimizer steps each attempt ran, from what its workers reported
executing, and what the table and the report say about steps that ran twice or a resume that did not
happen. Pure: journal records in, the view and its text out."""

from oomladder.record.history import fold
from oomladder.record.steps import RANGES_KEPT
from oomladder.views.report import build_report, render_markdown
from oomladder.views.table import steps_text


def journal(*attempts):
    """Records of a run whose attempts reported (resume_from step, began_at, executed steps, extra progress)."""
    records = [{"type": "run_started", "ts": 0.0, "command": ["python", "train.py"]}]
    for n, (resume, began, executed, *extra) in enumerate(attempts, start=1):
        records.append({"type": "attempt_started", "ts": n, "attempt": n, "plan": {}, "rung": None, "reason": "",
                        "resume_from": {"path": "ckpt", "step": resume} if resume is not None else None})
        if began is not None:
            records.append({"type": "progress", "ts": n + 0.1, "attempt": n, "began_at": began})
        for step in executed:
            records.append({"type": "progress", "ts": n + 0.2, "attempt": n, "step": step, "executed": True})
            records.append({"type": "progress", "ts": n + 0.3, "attempt": n, "step": step, "loss": 1.0})  # on_log
        records += [{"type": "progress", "ts": n + 0.4, "attempt": n, **e} for e in extra]
        records.append({"type": "attempt_ended", "ts": n + 0.5, "attempt": n, "outcome": "failed"})
    return fold(records)


def test_each_attempt_counts_the_steps_its_workers_ran_once_each_whatever_else_they_reported():
    view = journal((None, 0, [1, 2]), (2, 2, [3, 4, 5, 6]))
    assert [a.steps for a in view.attempts] == [[1, 2], [3, 4, 5, 6]]
    assert view.steps_reported and not view.repeated_steps and not view.missing_steps
    assert view.repeated_steps == [] and view.missing_steps == []
    assert [steps_text(a) for a in view.attempts] == ["1–2", "3–6 (resumed)"]


def test_a_worker_that_began_at_step_0_after_being_told_to_resume_shows_its_steps_again():
    view = journal((None, 0, [1, 2]), (2, 0, [1, 2, 3, 4, 5, 6]))
    second = view.attempts[1]
    assert not second.resumed and second.ran_again == [1, 2]
    assert second.resume_missed == "asked to resume from the end of step 2, it began at step 0"
    assert view.repeated_steps == [1, 2]
    assert steps_text(second) == "1–6 (1–2 again; did not resume)"


def test_a_checkpoint_the_worker_could_not_read_is_the_reason_given():
    view = journal((None, 0, [1, 2]), (2, 0, [1, 2], {"resume_failed": "the checkpoint ckpt is not whole"}))
    assert view.attempts[1].resume_missed == "the checkpoint ckpt is not whole"


def test_resumed_is_shown_only_when_the_worker_began_after_step_0():
    claimed = journal((None, 0, [1, 2]), (2, None, []))  # told to resume, reported nothing yet
    assert steps_text(claimed.attempts[1]) == "not reported"
    proven = journal((None, 0, [1, 2]), (2, 2, []))  # began at 2, then died in step 3
    assert steps_text(proven.attempts[1]) == "none (resumed)"


def test_a_program_that_reports_no_steps_has_no_step_counts_and_the_report_says_so():
    view = journal((None, None, []), (None, None, []))
    assert not view.steps_reported and view.repeated_steps == []
    report = build_report(view)
    assert report["steps"] == {"reported": False, "repeated": [], "missing": [], "exact": True}
    assert "not reported by the program" in render_markdown(report)


def test_steps_no_attempt_ran_are_missing():
    view = journal((None, 0, [1, 2]), (4, 4, [5, 6]))
    assert view.missing_steps == [3, 4]
    assert "**3–4 never reported**" in render_markdown(build_report(view))


def test_the_report_names_the_steps_that_ran_more_than_once():
    report = build_report(journal((None, 0, [1, 2, 3]), (1, 0, [1, 2, 3, 4])))
    assert report["steps"]["repeated"] == [[1, 3]]  # ranges [first, last]: a step set never grows with its steps
    assert report["attempts"][1]["ran_again"] == [[1, 3]] and report["attempts"][1]["began_at_step"] == 0
    assert report["attempts"][1]["steps_executed"] == [[1, 4]]
    md = render_markdown(report)
    assert "**1–3 ran more than once** (lost work)" in md and "**did not resume**" in md


def test_a_journal_from_before_steps_were_reported_counts_them_as_it_did():
    records = [{"type": "run_started", "ts": 0.0, "command": ["x"]},
               {"type": "attempt_started", "ts": 1, "attempt": 1, "plan": {}, "rung": None, "reason": ""},
               {"type": "progress", "ts": 1.1, "attempt": 1, "step": 2},
               {"type": "attempt_ended", "ts": 1.2, "attempt": 1, "outcome": "failed"},
               {"type": "attempt_started", "ts": 2, "attempt": 2, "plan": {}, "rung": None, "reason": "",
                "resume_from": {"path": "c", "step": 2}},
               {"type": "progress", "ts": 2.1, "attempt": 2, "step": 6},
               {"type": "attempt_ended", "ts": 2.2, "attempt": 2, "outcome": "finished"}]
    view = fold(records)
    assert [a.steps for a in view.attempts] == [[1, 2], [3, 4, 5, 6]]
    assert steps_text(view.attempts[1]) == "3–6 (resumed)"


def test_sparse_step_numbers_are_kept_in_bounded_ranges_and_said_to_be_sparse():
    """A program that reports samples seen (16, 32, ...) as its steps: the view keeps a bounded number of ranges,
    claims no missing step, and says the numbers are too sparse to check."""
    steps = list(range(16, 16 * 20_000 + 1, 16))
    view = journal((None, 0, steps))
    attempt, = view.attempts
    assert not attempt.steps.exact and len(attempt.steps.ranges()) <= 2 * RANGES_KEPT
    assert (attempt.steps.first, attempt.steps.last) == (16, 320_000)
    report = build_report(view)
    assert report["steps"]["exact"] is False and report["steps"]["missing"] == []
    assert "too sparse to check one by one" in render_markdown(report)
