"""Out of memory while the model loads, on the CPU with real allocator errors under --memory-cap: the load
request is known before the load, the load-phase rungs (load dtype, int8, nf4 through BitsAndBytesConfig)
answer it, the CPU emulation's own limit is explained rather than walked into, and weights that
`device_map="auto"` offloads are reported, or with --no-offload treated as out of memory. The program,
examples/trainer_lora.py, trains a 168M-parameter Llama saved in bf16 (a 321 MiB file)."""

import importlib.util
import json
import sys

import pytest

from tests.conftest import ROOT, processes_of
from tests.e2e.ledger import assert_each_step_ran_once
from tests.e2e.test_recovery import oomladder, view_of

pytestmark = pytest.mark.e2e
LOAD_TINY = ROOT / "examples" / "trainer_lora.py"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The bf16 checkpoint, built once and shared (built outside oomladder: building is not what is tested)."""
    spec = importlib.util.spec_from_file_location("load_tiny", LOAD_TINY)
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    folder = tmp_path_factory.mktemp("checkpoint") / "m168"
    program.build(str(folder))
    return folder


def run(tmp_path, env, checkpoint, *options, program=()):
    run_dir = tmp_path / "run"
    result = oomladder("run", "--run-dir", str(run_dir), *options, "--", sys.executable, str(LOAD_TINY),
                       "--model-dir", str(checkpoint), "--output-dir", str(tmp_path / "out"), "--count-steps",
                       str(tmp_path / "steps"), *program, cwd=tmp_path, env=env)
    return result, run_dir


def loaded(run_dir, attempt):
    log = (run_dir / "attempts" / f"{attempt:03d}" / "stdout.log").read_text()
    return next(line for line in log.splitlines() if line.startswith("loaded:"))


def test_a_bf16_checkpoint_loaded_as_float32_that_does_not_fit_loads_in_bf16_and_trains(tmp_path, env, checkpoint):
    result, run_dir = run(tmp_path, env, checkpoint, "--memory-cap", "800MiB")
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    first, second = view.attempts
    assert first.failure.is_memory and first.failure.phase == "load"
    assert view.load.files_bytes > 300 * 2**20 and view.load.config["num_hidden_layers"] == 8
    assert second.rung == "bf16" and second.plan.load_dtype == "bfloat16"
    assert "loaded: dtype torch.bfloat16" in loaded(run_dir, 2)
    assert_each_step_ran_once(tmp_path / "steps", 2)
    md = (run_dir / "report.md").read_text()
    assert "OOM while the model loaded" in md and "frozen base weights load in bf16" in md
    assert processes_of(run_dir) == []


def test_a_checkpoint_the_cpu_emulation_cannot_even_map_stops_at_once_and_says_why(tmp_path, env, checkpoint):
    """Under 600MiB the 321 MiB file and its weights never fit: exit 4 with the emulation's explanation after one
    attempt, not exit 3 (a bug) and not three more attempts that could not load either."""
    result, run_dir = run(tmp_path, env, checkpoint, "--memory-cap", "600MiB")
    assert result.returncode == 4, result.stdout + result.stderr
    view = view_of(run_dir)
    assert len(view.attempts) == 1 and view.attempts[0].failure.phase == "load"
    assert view.ended.status == "ladder_exhausted"
    assert "under the CPU emulation the checkpoint's files (321 MiB) are mapped" in view.ended.reason
    assert "under the CPU emulation" in (run_dir / "report.md").read_text()


def test_weights_device_map_puts_on_disk_are_reported_at_once(tmp_path, env, checkpoint):
    result, run_dir = run(tmp_path, env, checkpoint, program=("--load-dtype", "bfloat16", "--max-memory-cpu", "200MiB"))
    assert "device_map put weights off the device (8 of 12 modules on disk)" in result.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert [w["about"] for w in report["warnings"]] == ["offload"]


@pytest.mark.parametrize("budget, rungs, layers", [("320MiB", [None, "int8"], "Linear8bitLt"),
                                                   ("200MiB", [None, "int8", "nf4"], "Linear4bit")])
def test_with_no_offload_the_ladder_quantizes_until_the_model_fits(tmp_path, env, checkpoint, budget, rungs, layers):
    """8-bit where it fits the budget; where it does not, Transformers refuses to dispatch a quantized model
    off the device, which is out of memory too, and 4-bit follows. Both train, through BitsAndBytesConfig."""
    result, run_dir = run(tmp_path, env, checkpoint, "--no-offload",
                          program=("--load-dtype", "bfloat16", "--max-memory-cpu", budget))
    assert result.returncode == 0, result.stdout + result.stderr
    view = view_of(run_dir)
    assert [a.rung for a in view.attempts] == rungs
    assert all(a.failure.kind.value == "offloaded" and a.failure.phase == "load" for a in view.attempts[:-1])
    assert layers in loaded(run_dir, len(rungs))
    assert_each_step_ran_once(tmp_path / "steps", 2)
