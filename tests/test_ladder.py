"""The ladder as data (YAML) and as a pure step from (plan, failure) to the next plan."""

import dataclasses

import pytest

from oomladder.classify import Failure, Kind
from oomladder.errors import LadderFileError, StrategyError
from oomladder.ladder import Decision, climb, ladder_from_journal, load_ladder, next_plan, parse_ladder
from oomladder.plan import Facts, Plan
from oomladder.strategies import registry
from oomladder.strategies.base import Applied, Strategy

OOM = Failure(Kind.CPU_OOM, "device", "CPU allocator out of memory", phase="train", step=2)
HOST = Failure(Kind.DATALOADER_KILLED, "host", "a DataLoader worker was killed")
PROGRAM = Plan(per_device_train_batch_size=16, gradient_accumulation_steps=1, per_device_eval_batch_size=8,
               precision="fp32", load_dtype="float32", quantization="none", gradient_checkpointing=False,
               dataloader_num_workers=2, allocator="", world_size=1, optim="adamw_torch", fused_cross_entropy=False,
               activation_offloading=False)
LORA_ON_CPU = Facts(device="cpu", bf16_supported=True, base_frozen=True)


def walk(ladder, plan=PROGRAM, facts=LORA_ON_CPU, failure=OOM):
    """The rungs taken by repeated OOMs, as the runner would take them, and the decision that ends them."""
    steps = list(climb(ladder, plan, facts, failure, {}))
    return [s.decision.rung for s in steps[:-1]], steps[-1].decision


def test_the_default_ladder_walks_the_cards_order():
    taken, end = walk(load_ladder(None))
    assert taken == ["bf16", "int8", "halve_batch", "gradient_checkpointing",
                     "halve_batch", "halve_batch", "halve_batch", "nf4"]
    assert end.reason == "no rung of the ladder is left that saves device memory"


def test_the_default_ladder_on_cuda_starts_with_the_free_allocator_rung():
    taken, _ = walk(load_ladder(None), facts=LORA_ON_CPU.__class__(device="cuda", bf16_supported=True,
                                                                   base_frozen=True))
    assert taken[0] == "expandable_segments"


def test_skips_are_recorded_with_their_reasons():
    decision = next_plan(load_ladder(None), PROGRAM.replace(precision="bf16", load_dtype="bfloat16"),
                         LORA_ON_CPU, OOM, {})
    assert decision.rung == "int8"
    assert dict(decision.skipped) == {
        "expandable_segments": "the worker ran on cpu: only a CUDA caching allocator has segments to expand",
        "fused_cross_entropy": "the worker ran on cpu: Liger's fused cross-entropy is a Triton kernel, CUDA only",
        "bf16": "training already runs in bf16",
        "optimizer_8bit": "only adapters train, the base is frozen: their optimizer states are a sliver of the "
                          "memory, so 8-bit states would save next to nothing (this rung is for full fine-tunes)"}


def test_the_effective_batch_never_changes_along_the_whole_ladder():
    steps = list(climb(load_ladder(None), PROGRAM, LORA_ON_CPU, OOM, {}))
    assert all(s.decision.plan.effective_batch == 16 for s in steps[:-1])
    last = steps[-1].before
    assert last.per_device_train_batch_size == 1 and last.gradient_accumulation_steps == 16


def test_a_rung_that_would_change_the_effective_batch_is_refused(monkeypatch):
    class Sloppy(Strategy):
        name = "sloppy"

        def apply(self, plan, facts, failure):
            return Applied(plan.replace(per_device_train_batch_size=plan.per_device_train_batch_size // 2), "smaller")

    monkeypatch.setitem(registry._REGISTRY, "sloppy", Sloppy)
    decision = next_plan(parse_ladder("rungs: [sloppy, halve_batch]", "test"), PROGRAM, LORA_ON_CPU, OOM, {})
    assert decision.rung == "halve_batch"
    assert decision.skipped == (("sloppy", "refused: it would change the effective batch from 16 to 8"),)


def test_times_caps_a_rung_and_host_memory_goes_to_fewer_workers():
    ladder = parse_ladder("rungs: [{halve_batch: {times: 2}}, fewer_workers]", "test")
    assert walk(ladder)[0] == ["halve_batch", "halve_batch"]
    assert walk(ladder, failure=HOST)[0] == ["fewer_workers", "fewer_workers"]


@pytest.mark.parametrize("text, message", [
    ("rungs: [bf16", "is not valid YAML at line 1"),
    ("- bf16", "needs a non-empty 'rungs:' list"),
    ("rungs: []", "needs a non-empty 'rungs:' list"),
    ("version: 2\nrungs: [bf16]", "is version 2"),
    ("rung: [bf16]", "unknown keys"),
    ("rungs: [[bf16]]", "rung 1 of ladder file 'x.yaml' must be a strategy name"),
    ("rungs: [{halve_batch: 2}]", "parameters of 'halve_batch' must be a mapping"),
    ("rungs: [{halve_batch: {times: 0}}]", "'times' must be a whole number"),
])
def test_a_broken_ladder_file_says_what_is_wrong(text, message):
    with pytest.raises(LadderFileError, match=message):
        parse_ladder(text, "x.yaml")


def test_an_unknown_strategy_names_the_rung_and_the_known_ones():
    with pytest.raises(StrategyError, match=r"rung 2 of ladder file 'x.yaml': unknown strategy 'int4'.*known:"):
        parse_ladder("rungs: [bf16, int4]", "x.yaml")


def test_a_missing_ladder_file_says_what_to_do(tmp_path):
    with pytest.raises(LadderFileError, match="does not exist.*leave out --ladder"):
        load_ladder(tmp_path / "nope.yaml")


def test_ladder_files_are_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("rungs: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(LadderFileError, match="not valid YAML"):
        load_ladder(path)


def test_a_fragmented_oom_tries_the_allocator_rung_before_any_that_changes_training():
    fragmented = Failure(Kind.CUDA_OOM, "device", "CUDA out of memory", numbers={
        "tried_to_allocate": 3 * 2**30, "reserved_unallocated": int(4.84 * 2**30), "total_capacity": 24 * 2**30})
    ladder = parse_ladder("rungs: [halve_batch, expandable_segments]", "test")
    cuda = Facts(device="cuda", bf16_supported=True, base_frozen=True)
    assert next_plan(ladder, PROGRAM, cuda, fragmented, {}).rung == "expandable_segments"
    tight = Failure(Kind.CUDA_OOM, "device", "CUDA out of memory", numbers={"tried_to_allocate": 2**30})
    assert next_plan(ladder, PROGRAM, cuda, tight, {}).rung == "halve_batch"


def test_a_ladder_is_journaled_as_data_and_a_resumed_run_reads_back_the_same_rungs():
    ladder = parse_ladder("rungs: [bf16, {halve_batch: {min_batch: 2}}, {fewer_workers: {times: 3}}]", "mine.yaml")
    data = ladder.to_dict()
    assert data["source"] == "mine.yaml"
    assert [{k: r[k] for k in ("name", "params", "times")} for r in data["rungs"]] == [
        {"name": "bf16", "params": {}, "times": 1},
        {"name": "halve_batch", "params": {"min_batch": 2}, "times": None},
        {"name": "fewer_workers", "params": {}, "times": 3}]
    assert [r["cost"]["field"] for r in data["rungs"]] == ["precision", "per_device_train_batch_size",
                                                          "dataloader_num_workers"]  # what each costs, for the report
    assert ladder_from_journal(data).to_dict() == data


def test_ladders_rungs_decisions_and_steps_are_values_that_cannot_change():
    ladder = load_ladder(None)
    step = next(climb(ladder, PROGRAM, LORA_ON_CPU, OOM, {}))
    for value, field in ((ladder, "source"), (ladder.rungs[0], "times"), (step.decision, "reason"),
                         (step, "passed_over")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, None)


def test_a_decision_that_says_nothing_more_skipped_nothing_and_stacked_nothing():
    decision = Decision(PROGRAM, "bf16", 1, "bf16 halves the activations")
    assert (decision.skipped, decision.rung_indices, decision.estimate) == ((), (), None)


def test_the_steps_of_a_climb_that_nothing_passed_over_say_so():
    steps = list(climb(parse_ladder("rungs: [bf16]", "test"), PROGRAM, LORA_ON_CPU, OOM, {}))
    assert [(s.decision.rung, s.passed_over) for s in steps] == [("bf16", None), (None, None)]


def test_a_rung_that_changes_nothing_is_skipped_and_the_next_one_is_taken(monkeypatch):
    class Idle(Strategy):
        name = "idle"

        def apply(self, plan, facts, failure):
            return Applied(plan, "nothing to do")

    monkeypatch.setitem(registry._REGISTRY, "idle", Idle)
    decision = next_plan(parse_ladder("rungs: [idle, halve_batch]", "test"), PROGRAM, LORA_ON_CPU, OOM, {})
    assert (decision.rung, decision.skipped) == ("halve_batch", (("idle", "it changed nothing"),))


def test_an_evaluation_that_no_rung_saves_is_named_as_such():
    eval_oom = Failure(Kind.CPU_OOM, "device", "CPU allocator out of memory", phase="eval")
    decision = next_plan(parse_ladder("rungs: [bf16]", "test"), PROGRAM, LORA_ON_CPU, eval_oom, {})
    assert decision.exhausted and decision.reason == "no rung of the ladder is left that saves the evaluation"


@pytest.mark.parametrize("text, message", [
    ("rungs: [bf16", "ladder file 'x.yaml' is not valid YAML at line 1 (expected ',' or ']', but got '<stream end>'): "
                     "fix it, or compare with configs/default.yaml"),
    ("rung: [bf16]\nfoo: 1", "ladder file 'x.yaml' has unknown keys ['foo', 'rung']: only 'version', 'description' "
                             "and 'rungs' are read"),
    ("- bf16", "ladder file 'x.yaml' needs a non-empty 'rungs:' list of strategy names (see configs/default.yaml)"),
    ("version: 2\nrungs: [bf16]", "ladder file 'x.yaml' is version 2; this oomladder reads version 1"),
    ("rungs: [[bf16]]", "rung 1 of ladder file 'x.yaml' must be a strategy name or 'name: {param: value}', "
                        "not ['bf16']"),
    ("rungs: [{halve_batch: 2}]", "rung 1 of ladder file 'x.yaml': the parameters of 'halve_batch' must be a mapping "
                                  "like {min_batch: 2}, not 2"),
    ("rungs: [bf16, {halve_batch: {times: true}}]", "rung 2 of ladder file 'x.yaml': 'times' must be a whole number "
                                                    "of 1 or more, not True"),
    ("rungs: [{halve_batch: {times: 1.5}}]", "rung 1 of ladder file 'x.yaml': 'times' must be a whole number of 1 or "
                                             "more, not 1.5"),
    ("rungs: [bf16, int4]", "rung 2 of ladder file 'x.yaml': unknown strategy 'int4' (known: activation_offloading, "
                            "bf16, expandable_segments, fewer_workers, fused_cross_entropy, gradient_checkpointing, "
                            "halve_batch, halve_eval_batch, int8, nf4, optimizer_8bit)"),
])
def test_a_broken_ladder_file_is_told_in_one_whole_sentence(text, message):
    with pytest.raises((LadderFileError, StrategyError)) as raised:
        parse_ladder(text, "x.yaml")
    assert str(raised.value) == message


def test_a_ladder_file_that_cannot_be_read_or_found_says_what_to_do(tmp_path):
    with pytest.raises(LadderFileError) as missing:
        load_ladder(tmp_path)  # a folder is not a ladder file
    assert str(missing.value) == (f"ladder file '{tmp_path}' does not exist: give the path of a YAML ladder (see "
                                  f"configs/default.yaml) or leave out --ladder to use the default")
    binary = tmp_path / "ladder.yaml"
    binary.write_bytes(b"\xff\xfe rungs")
    with pytest.raises(LadderFileError, match=r"^ladder file '.*ladder.yaml' cannot be read \(.*codec.*\): check its "
                                              r"permissions and encoding$"):
        load_ladder(binary)


def test_a_rung_written_as_a_name_with_no_parameters_is_the_strategy_with_its_defaults():
    assert parse_ladder("rungs: [{bf16: }]", "x.yaml").to_dict() == parse_ladder("rungs: [bf16]", "x.yaml").to_dict()


def test_the_default_ladder_says_where_it_comes_from_and_a_file_its_path(tmp_path):
    assert load_ladder(None).source == "default ladder (default.yaml)"
    path = tmp_path / "mine.yaml"
    path.write_text("rungs: [bf16]\n")
    assert load_ladder(path).source == str(path)
    assert [r.name for r in load_ladder(str(path)).rungs] == ["bf16"]


def test_a_character_yaml_does_not_allow_is_named_as_the_reason():
    with pytest.raises(LadderFileError) as raised:
        parse_ladder("rungs: [\x07]", "x.yaml")
    assert str(raised.value) == ("ladder file 'x.yaml' is not valid YAML (special characters are not allowed): fix "
                                 "it, or compare with configs/default.yaml")


def test_only_the_keys_a_ladder_file_does_not_know_are_named():
    with pytest.raises(LadderFileError) as raised:
        parse_ladder("version: 1\ndescription: mine\nrungs: [bf16]\nrung: [int8]", "x.yaml")
    assert str(raised.value).startswith("ladder file 'x.yaml' has unknown keys ['rung']:")


def test_a_journal_from_before_ladders_named_their_source_reads_back_as_the_journals():
    assert ladder_from_journal({"rungs": [{"name": "bf16", "params": {}, "times": 1}]}).source == "journal"
