"""What the worker is told for the program's own experiment tracker: its attempt, its rung and why.
The tracker receiving it is tests/e2e/test_morning_after.py's, on a real Trainer with TensorBoard."""

from tests.test_runner import ScriptedWorkers, finish, oom_at, run


def test_each_worker_is_told_its_rung_and_why(tmp_path):
    workers = ScriptedWorkers(oom_at(3), finish)
    code, view = run(tmp_path, workers)
    first, second = (spec.env for spec in workers.specs)
    assert code == 0
    assert (first["OOMLADDER_ATTEMPT"], first["OOMLADDER_RUNG"], first["OOMLADDER_REASON"]) == ("001", "start", "")
    assert (second["OOMLADDER_ATTEMPT"], second["OOMLADDER_RUNG"]) == ("002", view.attempts[1].rung)
    assert second["OOMLADDER_REASON"] == view.attempts[1].reason and second["OOMLADDER_REASON"]

