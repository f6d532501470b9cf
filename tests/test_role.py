"""Which process of a worker's tree speaks for it (worker/protocol/role.py), with real processes and the real adapter:
the one that starts training, wherever a launcher put it; never the launcher above it, whose death only repeats its
rank's; the launcher itself when it dies before anything trains. No torch: starting to train is `memcap.arm()`, which
every framework's adapter calls first, and the deaths are ordinary exceptions (what kills them is the classifier's
business, tested in test_classify.py; real OOMs are the end-to-end tests')."""

import json
import os
import subprocess
import sys
import textwrap

from oomladder.process.launch import INJECT_DIR
from oomladder.run.trainers import died_below_a_wrapper, trains_in
from oomladder.worker.protocol.files import AttemptFiles, claims

TRAINS = "from oomladder.worker.hooks import memcap; memcap.arm()"


def run(tmp_path, parent, child):
    """`python -c parent` as a worker's command would start it, `child` (python -c) in its CHILD variable."""
    folder = tmp_path / "attempt"
    folder.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(INJECT_DIR), "OOMLADDER_ATTEMPT_DIR": str(folder),
           "OOMLADDER_PLAN": "{}", "OOMLADDER_SUPERVISOR_PID": str(os.getpid()), "CHILD": textwrap.dedent(child)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(parent)], env=env, capture_output=True, text=True,
                          timeout=60)
    return done, folder


LAUNCHER = """
    import os, subprocess, sys
    subprocess.run([sys.executable, "-c", os.environ["CHILD"]], check=True)
"""


def test_a_rank_a_launcher_started_speaks_for_the_worker_and_the_launcher_records_nothing(tmp_path):
    done, folder = run(tmp_path, LAUNCHER, f"""
        {TRAINS}
        from oomladder.worker import common
        common.observe({{"per_device_train_batch_size": 16}})
        raise ValueError("the rank's own death")
    """)
    assert done.returncode == 1 and "CalledProcessError" in done.stderr  # the launcher did die of it
    failure = json.loads((folder / "failure.0.json").read_text())
    claim, = claims(folder)
    assert failure["exc_type"] == "ValueError" and failure["pid"] == claim["pid"]
    assert claim["ancestors"] and claim["launchers"][-1][:2] == [sys.executable, "-c"]  # the launcher, by its argv
    assert json.loads((folder / "observed.0.json").read_text())["pid"] == claim["pid"]
    peaks = [e for _, e in AttemptFiles(folder).new_progress() if "peak" in e]
    assert [e["pid"] for e in peaks] == [claim["pid"]]  # the rank's; the launcher, which trained nothing, has none


def test_a_launcher_that_dies_before_anything_trains_is_the_attempt_s_failure(tmp_path):
    done, folder = run(tmp_path, """
        raise FileNotFoundError("no such script: train.py")
    """, "")
    failure = json.loads((folder / "failure.0.json").read_text())
    assert failure["exc_type"] == "FileNotFoundError" and failure["peak"] is None  # it trained nothing
    assert claims(folder) == []


def test_what_the_training_process_starts_without_training_is_its_helper_and_says_nothing(tmp_path):
    done, folder = run(tmp_path, f"""
        {TRAINS}
        import os, subprocess, sys
        subprocess.run([sys.executable, "-c", os.environ["CHILD"]])
        raise ValueError("the trainer's death")
    """, "raise KeyError('a helper dies of its own')")
    assert "KeyError" in done.stderr
    failure = json.loads((folder / "failure.0.json").read_text())
    assert failure["exc_type"] == "ValueError"
    assert [c["launchers"] for c in claims(folder)] == [[]]  # the command itself trains


def test_the_run_keeps_the_training_process_a_launcher_started_and_the_notebook_a_command_names():
    kernel = {"pid": 7, "argv": ["/venv/bin/python", "-m", "ipykernel_launcher", "-f", "/tmp/k.json"],
              "launchers": [["/venv/bin/python", "/venv/bin/papermill", "nb.ipynb", "out.ipynb"]]}
    assert trains_in([kernel], ["papermill", "nb.ipynb", "out.ipynb"]) == {
        "trains_in": "a Jupyter kernel (ipykernel)", "notebook": "nb.ipynb"}
    script = {"pid": 8, "argv": ["python", "sft.py", "--lr", "1e-4"], "launchers": [["trl", "sft"]]}
    assert trains_in([script], ["trl", "sft"]) == {"trains_in": "python sft.py --lr 1e-4", "notebook": None}
    assert trains_in([{"pid": 9, "argv": ["python", "train.py"], "launchers": []}], ["python", "train.py"]) == {}
    assert trains_in([], ["python", "train.py"]) == {}


def test_a_wrapper_s_exit_0_does_not_hide_the_death_of_the_rank_it_started():
    below = [{"pid": 8, "launchers": [["bash", "-c", "accelerate launch train.py; echo done"]]}]
    assert died_below_a_wrapper({"pid": 8, "exc_type": "RuntimeError"}, below)
    assert not died_below_a_wrapper(None, below)
    # The command's own process: its record with exit 0 is an exception it caught and lived past.
    assert not died_below_a_wrapper({"pid": 9}, [{"pid": 9, "launchers": []}])


def test_a_rank_killed_without_a_record_leaves_no_launcher_s_record_in_its_place(tmp_path):
    """The kernel's OOM killer leaves nothing behind: the classifier then reads the exit status and the cgroup, not
    the launcher's CalledProcessError, which would say "error" about a death it only saw."""
    done, folder = run(tmp_path, LAUNCHER, f"""
        {TRAINS}
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert done.returncode == 1 and "SIGKILL" in done.stderr
    assert len(claims(folder)) == 1 and not (folder / "failure.0.json").exists()
