"""Bad input: one clear line on stderr saying what is wrong and what to do, exit status 2, no
traceback, and an existing run directory left as it was."""

import json
import re
import subprocess

import pytest

from tests.conftest import oomladder_argv

BAD_INPUT = {
    "no command": (["run"], "no command to run"),
    "only the separator": (["run", "--"], "no command to run"),
    "misspelt flag": (["run", "--memroy-cap", "1G", "--", "python", "-c", "pass"],
                      "unrecognized arguments: --memroy-cap; did you mean --memory-cap? (see 'oomladder run --help')"),
    "misspelt flag with its value": (["run", "--max-atempts=3", "--", "python", "-c", "pass"],
                                     "did you mean --max-attempts? (see 'oomladder run --help')"),
    "misspelt flag of resume": (["resume", "r", "--node-rnak", "1"],
                                "unrecognized arguments: --node-rnak 1; did you mean --node-rank? (see 'oomladder "
                                "resume --help')"),
    "misspelt flag that hides a required one": (["plan", "--modle", "m", "--seq-len", "512"],
                                                "--modle; did you mean --model? (see 'oomladder plan --help')"),
    "misspelt choice": (["report", "r", "--format", "mdd"], "--format: invalid choice: 'mdd'; did you mean 'md'? "
                        "(choose from table, md, json, html) (see 'oomladder report --help')"),
    "quiet and verbose": (["run", "--quiet", "--verbose", "--", "python", "-c", "pass"],
                          "-v/--verbose: not allowed with argument -q/--quiet"),
    "malformed size": (["run", "--memory-cap", "12parsecs", "--", "python", "-c", "pass"], "not a memory size"),
    # 1200 bytes holds no model: a number without its unit is a unit forgotten, not a tiny device.
    "size without a unit": (["run", "--memory-cap", "1200", "--", "python", "-c", "pass"],
                            "--memory-cap '1200' has no unit: write 1200MiB or 1200GiB"),
    "negative size": (["run", "--memory-cap", "-1GiB", "--", "python", "-c", "pass"],
                      "--memory-cap '-1GiB' is not a memory size above zero"),
    "plan's size without a unit": (["plan", "--model", "nowhere", "--seq-len", "512", "--memory-cap", "24"],
                                   "--memory-cap '24' has no unit"),
    "missing ladder": (["run", "--ladder", "nope.yaml", "--", "python", "-c", "pass"], "does not exist"),
    "no such program": (["run", "--", "no-such-program-xyz"], "no such program"),
    "missing script": (["run", "--", "python", "no_such_train.py"], "the script 'no_such_train.py' does not exist"),
    "zero attempts": (["run", "--max-attempts", "0", "--", "python", "-c", "pass"], "must be 1 or more"),
    "unknown setting": (["run", "--set", "bs=2", "--", "python", "-c", "pass"], "'bs' is not a plan setting"),
    "placeholder without value": (["run", "--", "python", "-c", "pass", "{per_device_train_batch_size}"],
                                  "add --set per_device_train_batch_size=VALUE"),
    "node rank without a node count": (["run", "--node-rank", "1", "--", "python", "-c", "pass"],
                                       "--node-rank needs --nnodes"),
    "node count without a node rank": (["run", "--nnodes", "2", "--run-dir", "r", "--", "python", "-c", "pass"],
                                       "--nnodes 2 needs --node-rank"),
    "node rank out of range": (["run", "--nnodes", "2", "--node-rank", "2", "--run-dir", "r", "--", "python", "-c",
                                "pass"], "--node-rank 2 is out of range for --nnodes 2"),
    "negative node rank": (["run", "--node-rank", "-1", "--", "python", "-c", "pass"], "must be 0 or more"),
    "several nodes without a shared run directory": (["run", "--nnodes", "2", "--node-rank", "0", "--", "python",
                                                      "-c", "pass"], "--nnodes 2 needs --run-dir"),
    "unknown verb": (["train"], "command: invalid choice: 'train' (choose from run, resume"),
    "misspelt verb": (["rn"], "command: invalid choice: 'rn'; did you mean 'run'? (choose from run, resume"),
    "report of a non-run": (["report", "."], "is not an oomladder run directory"),
    "resume of a non-run": (["resume", "."], "is not an oomladder run directory"),
    "resume of a missing path": (["resume", "runs/nigth"], "'runs/nigth' does not exist: give the --run-dir of a run"),
    "report of a missing path": (["report", "nowhere"], "'nowhere' does not exist"),
    "resume without a directory": (["resume"], "the following arguments are required: run_dir"),
    "plan without a model": (["plan", "--seq-len", "512"], "the following arguments are required: --model"),
    "plan of a missing model": (["plan", "--model", "nowhere", "--seq-len", "512", "--memory", "16GiB"],
                                "'nowhere' is neither a model folder with a config.json nor a config file"),
    "plan with a bad setting": (["plan", "--model", "nowhere", "--seq-len", "512", "--set", "precision=fp8"],
                                "precision must be one of fp32, bf16, fp16, not 'fp8'"),
}


def _check_one_line(result, message):
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("oomladder: ") and message in lines[0], result.stderr


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_gets_one_line_and_exit_status_2(case, tmp_path, env):
    argv, message = BAD_INPUT[case]
    result = subprocess.run(oomladder_argv(*argv), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    _check_one_line(result, message)
    assert not (tmp_path / "oomladder-runs").exists() and not (tmp_path / "r").exists()  # nothing was started


@pytest.mark.parametrize("ladder, message", [
    ("rungs: [bf16\n", "is not valid YAML at line 2"),
    ("rungs: [bf16, int4]\n", "unknown strategy 'int4'"),
    ("rungs: [{halve_batch: {floor: 2}}]\n", "has no parameter 'floor'"),
])
def test_a_bad_ladder_file_never_touches_the_run_directory(ladder, message, tmp_path, env):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "journal.jsonl").write_text('{"v": 1, "type": "run_started", "ts": 0, "command": ["x"]}\n')
    (tmp_path / "ladder.yaml").write_text(ladder)
    result = subprocess.run(oomladder_argv("run", "--ladder", "ladder.yaml", "--run-dir", "run", "--", "python", "-c",
                                           "pass"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    _check_one_line(result, message)
    assert (run_dir / "journal.jsonl").read_text() == '{"v": 1, "type": "run_started", "ts": 0, "command": ["x"]}\n'
    assert sorted(p.name for p in run_dir.iterdir()) == ["journal.jsonl"]


def test_a_run_directory_of_one_node_run_again_on_two_is_refused_and_kept(tmp_path, env):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    line = '{"v": 1, "type": "run_started", "ts": 0, "command": ["python", "-c", "pass"]}\n'
    (run_dir / "journal.jsonl").write_text(line)
    result = subprocess.run(oomladder_argv("run", "--nnodes", "2", "--node-rank", "1", "--run-dir", "run", "--",
                                           "python", "-c", "pass"), check=False, cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    _check_one_line(result, "holds a run on 1 node(s), not 2: give no --nnodes, or a new --run-dir")
    assert sorted(p.name for p in run_dir.iterdir()) == ["journal.jsonl"]
    assert (run_dir / "journal.jsonl").read_text() == line


def test_help_documents_the_exit_codes(env):
    result = subprocess.run(oomladder_argv("run", "--help"), env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for code in ("0 ", "2 ", "3 ", "4 ", "5 ", "130", "143"):
        assert f"  {code}" in result.stdout


def test_strategies_lists_the_rungs_in_ladder_order_in_whole_sentences(env):
    result = subprocess.run(oomladder_argv("strategies"), env={**env, "COLUMNS": "80"}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80  # wrapped at the terminal's width, between words
    headings = [line.split()[0] for line in lines[1:] if line and not line.startswith(" ")]
    assert headings[headings.index("expandable_segments"):] == [
        "expandable_segments", "fused_cross_entropy", "bf16", "optimizer_8bit", "int8", "halve_batch",
        "gradient_checkpointing", "activation_offloading", "nf4", "halve_eval_batch", "fewer_workers"]
    assert "halve_batch  (rungs 6 and 9; parameters: min_batch)" in lines
    entries = {block.split("\n", 1)[0].split()[0]: " ".join(block.split("\n", 1)[1].split())
               for block in result.stdout.split("\n\n")[1:]}
    for name, text in entries.items():  # each description whole, ending its sentence; then what it costs
        first = text.split(" For ")[0]
        assert first.endswith(".") and " Cost: " in text and text.endswith("."), (name, text)
    assert "the effective batch, and so the training, stays the same." in entries["halve_batch"]
    assert "memory lost to fragmentation comes back at no cost in speed" in entries["expandable_segments"]
    assert entries["int8"].split(" For ")[0] != entries["nf4"].split(" For ")[0]
    assert "about 1 byte per parameter" in entries["int8"] and "about half a byte per parameter" in entries["nf4"]
    assert "+33 %" in entries["gradient_checkpointing"] and "bandwidth-bound" in entries["activation_offloading"]


LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16, "num_attention_heads": 16,
            "num_key_value_heads": 16, "vocab_size": 32000, "torch_dtype": "float32"}


def _plan(tmp_path, env, *extra):
    import json
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text(json.dumps(LLAMA_1B))
    return subprocess.run(oomladder_argv("plan", "--model", str(tmp_path / "model"), *extra), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_plan_estimates_each_rung_and_names_the_first_that_fits(tmp_path, env):
    result = _plan(tmp_path, env, "--seq-len", "1024", "--batch-size", "16", "--lora-rank", "8", "--memory-cap",
                   "16GiB")
    assert result.returncode == 0, result.stderr
    # The first line names the model's folder, whose length is the test's: read the text whatever its wrapping.
    assert "0.95B parameters, LoRA r8 on q_proj,v_proj" in " ".join(result.stdout.split())
    for rung in ("start", "bf16", "int8", "halve_batch", "gradient_checkpointing"):
        assert rung in result.stdout
    assert "first to fit: #4 (halve_batch)" in result.stdout
    assert "a 14B model needs about 14 GB in 8-bit, not the 7 GB" in result.stdout


def test_plan_as_json_gives_every_rungs_parts_and_the_first_fit(tmp_path, env):
    import json
    result = _plan(tmp_path, env, "--seq-len", "1024", "--batch-size", "16", "--lora-rank", "8", "--memory-cap",
                   "16GiB", "--format", "json")
    data = json.loads(result.stdout)
    assert data["first_fit"] == 4 and data["rows"][0]["rung"] == "start"
    assert set(data["rows"][0]["parts"]) >= {"weights", "gradients", "optimizer states", "activations", "logits"}
    peaks = [row["peak"] for row in data["rows"]]
    assert peaks[2] < peaks[0]  # bf16


def test_plan_shows_where_the_memory_goes_and_takes_8bit_adamw_for_a_full_fine_tune(tmp_path, env):
    """Issue 16's full fine-tune: 34M parameters, AdamW, sequences of 16 at batch 2, on a 520 MiB CPU cap."""
    import json
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(
        {**LLAMA_1B, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 10, "num_attention_heads": 8,
         "num_key_value_heads": 8, "vocab_size": 2000}))
    argv = ("plan", "--model", str(tmp_path / "model"), "--seq-len", "16", "--batch-size", "2", "--memory-cap",
            "520MiB", "--device", "cpu", "--set", "optim=adamw_torch")
    shown = subprocess.run(oomladder_argv(*argv), env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "where the memory goes: optimizer states are 50 % of the estimated peak" in shown.stdout
    assert "first to fit: #2 (optimizer_8bit)" in shown.stdout
    for column in ("weights", "gradients", "optimizer states", "activations", "logits", "cost"):
        assert column in shown.stdout
    assert "int8 (the base weights train" in shown.stdout  # the rungs that do not apply, with why
    data = json.loads(subprocess.run(oomladder_argv(*argv, "--format", "json"), env=env, capture_output=True,
                                     text=True, timeout=60).stdout)
    start, bf16, eight = data["rows"][:3]
    assert start["dominant"] == "optimizer states"
    assert start["split"]["optimizer states"] == 4 * eight["split"]["optimizer states"]
    assert (bf16["passed_over"], eight["rung"], eight["cost"], eight["plan"]["optim"]) == (
        True, "optimizer_8bit", "~0 %", "adamw_bnb_8bit")


@pytest.mark.parametrize("lora", [True, False])
def test_plan_in_a_120_column_terminal_cuts_no_name_and_never_contradicts_its_table(tmp_path, env, lora):
    """The LoRA and the full fine-tune of the GPU check's 0.95B Llama, as a terminal 120 columns wide shows them."""
    adapters = ("--lora-rank", "8") if lora else ()
    result = _plan(tmp_path, {**env, "COLUMNS": "120"}, "--seq-len", "1024" if lora else "4096", "--batch-size", "16",
                   *adapters, "--memory-cap", "16GiB" if lora else "24GiB")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "…" not in result.stdout and max(len(line.rstrip()) for line in lines) <= 120
    rows = [line.split() for line in lines if re.match(r"^ +\d+ +[a-z]", line)]
    table = {row[1] for row in rows}
    assert {"start", "expandable_segments", "gradient_checkpointing", "activation_offloading", "halve_batch"} <= table
    assert any(row[1] == "halve_batch" and row[2:4] == ["batch", "16→8"] for row in rows)  # what it changes, whole
    text = " ".join(line.strip() for line in lines)
    skipped = text[text.index("not for this plan: "):text.index("weights alone")]
    assert not [name for name in table if f"{name} (" in skipped]  # a rung it lists is none its table uses
    assert ("fused_cross_entropy (" in skipped) and ((lora and "optimizer_8bit (" in skipped) or
                                                     (not lora and "int8 (the base weights train" in skipped))


def test_plan_takes_the_device_size_as_run_takes_the_cap_and_its_old_name_too(tmp_path, env):
    shown = subprocess.run(oomladder_argv("plan", "--help"), env=env, capture_output=True, text=True, timeout=60)
    assert "--memory-cap SIZE" in shown.stdout and "--memory " not in shown.stdout
    new = _plan(tmp_path, env, "--seq-len", "64", "--memory-cap", "16GiB", "--format", "json")
    old = _plan(tmp_path, env, "--seq-len", "64", "--memory", "16GiB", "--format", "json")
    assert new.returncode == old.returncode == 0 and json.loads(new.stdout) == json.loads(old.stdout)


def test_plan_for_trl_s_sft_trainer_counts_the_logits_its_metrics_keep(tmp_path, env):
    """SFTTrainer computes each token's entropy and accuracy from the full logits beside the loss: five more fp32
    tensors of the logits' size (memory/estimate.py). Without --trainer, `plan` said TRL + LoRA at batch 16 fit where
    both 16 and 8 rows ran out of memory."""
    runs = {trainer: json.loads(_plan(tmp_path, env, "--seq-len", "1024", "--batch-size", "16", "--lora-rank", "8",
                                      "--memory-cap", "16GiB", "--format", "json", *extra).stdout)["rows"][0]
            for trainer, extra in (("default", ()), ("trl-sft", ("--trainer", "trl-sft")))}
    assert runs["trl-sft"]["parts"]["logits"] == runs["default"]["parts"]["logits"] * (12 + 20) // 12
    assert runs["trl-sft"]["peak"] > runs["default"]["peak"]
    wrong = _plan(tmp_path, env, "--seq-len", "1024", "--memory-cap", "16GiB", "--trainer", "sft")
    assert wrong.returncode == 2 and "--trainer" in wrong.stderr and "trl-sft" in wrong.stderr


def test_plan_without_a_gpu_or_a_size_asks_for_the_size(tmp_path, env):
    result = _plan(tmp_path, env, "--seq-len", "1024")
    _check_one_line(result, "give --memory-cap, the device's size")


def test_a_report_read_by_head_ends_quietly(tmp_path, env):
    """`oomladder report DIR | head -1`: the reader leaves early; no traceback, no 'bug in oomladder'."""
    from tests.test_report_html import night
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    records = night()
    steps = [{"type": "progress", "ts": 2e9 + n, "attempt": 2, "step": n, "executed": True, "peak": n}
             for n in range(7, 5000)]  # a report longer than the pipe's buffer
    (run_dir / "journal.jsonl").write_text("".join(json.dumps({"v": 1, **r}) + "\n"
                                                   for r in records[:-2] + steps + records[-2:]))
    result = subprocess.run(" ".join(oomladder_argv("report", str(run_dir), "--format", "json")) + " | head -c 10",
                            shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert len(result.stdout) == 10 and result.stderr == ""
