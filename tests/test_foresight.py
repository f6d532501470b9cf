"""The estimator in the loop: after an OOM, the rungs the estimate says are needed are taken at once,
rungs that save too little are passed over, and the estimate is calibrated by the journal."""

from dataclasses import replace

from oomladder.classify import Failure, Kind
from oomladder.ladder import load_ladder, next_plan
from oomladder.memory.estimate import Term, usable
from oomladder.memory.foresight import calibration, climb_to_fit, estimate_for, fit_for
from oomladder.plan import Plan
from oomladder.record.history import fold
from oomladder.record.records import InPlaceRecord

# The demo's tiny Llama (20M parameters, 32,000-token vocabulary) with LoRA on q and v, as the worker reports it.
MODEL = {"shape": {"layers": 4, "hidden": 256, "intermediate": 688, "heads": 4, "kv_heads": 4, "vocab": 32000,
                   "linear_params": 3162112, "embedding_params": 8192000, "head_params": 8192000,
                   "other_params": 2304, "dtype": "float32", "attention": "sdpa"},
         "adapters": True, "trainable_params": 32768, "lora_targets": ["q_proj", "v_proj"]}
PROGRAM = {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1, "per_device_eval_batch_size": 16,
           "precision": "fp32", "load_dtype": "float32", "quantization": "none", "gradient_checkpointing": False,
           "dataloader_num_workers": 0, "optim": "adamw_torch_fused", "world_size": 1}
FACTS = {"device": "cpu", "bf16_supported": True, "base_frozen": True}
CAP = 1200 * 2**20
OOM = Failure(Kind.CPU_OOM, "device", "CPU allocator out of memory", phase="train", step=2)


def view_after_oom(model=MODEL, step_peak=400 * 2**20, failed_batch=(16, 256), phase="train", peak=None, tried=None,
                   program=PROGRAM, facts=FACTS):
    failure = {**OOM.to_dict(), "phase": phase, **({"numbers": {"tried_to_allocate": tried}} if tried else {})}
    records = [
        {"type": "run_started", "ts": 0.0, "command": ["python", "train.py"]},
        {"type": "attempt_started", "ts": 1.0, "attempt": 1, "plan": {}, "rung": None, "reason": ""},
        {"type": "observed", "ts": 2.0, "attempt": 1, "plan": program, "facts": facts, "model": model},
        {"type": "progress", "ts": 3.0, "attempt": 1, "step": 2, "peak": step_peak, "batch_shape": [16, 32]},
        {"type": "attempt_ended", "ts": 4.0, "attempt": 1, "outcome": "failed", "failure": failure,
         "batch_shape": list(failed_batch) if failed_batch else None, **({"peak": peak} if peak else {})},
    ]
    return fold(records)


def decide(view, ladder=None, cap=CAP):
    failure = view.attempts[-1].failure
    return climb_to_fit(ladder or load_ladder(None), view.final_plan, view.facts, failure, view.rung_uses,
                        fit_for(view, cap))


def test_rungs_are_stacked_in_ladder_order_until_the_estimate_fits():
    decision = decide(view_after_oom())
    assert decision.rung == "bf16 + halve_batch"
    assert decision.plan.precision == "bf16" and decision.plan.per_device_train_batch_size == 8
    assert decision.plan.effective_batch == 16
    assert len(decision.rung_indices) == 2
    assert decision.estimate["after"] <= decision.estimate["capacity"] < decision.estimate["before"]
    assert "fits" in decision.reason


def test_a_rung_that_saves_under_a_tenth_of_what_is_missing_is_passed_over_and_told():
    decision = decide(view_after_oom())
    skipped = dict(decision.skipped)
    assert "int8" in skipped and "passed over for rungs that save more" in skipped["int8"]
    assert decision.plan.quantization == "none"  # 8-bit would save megabytes of a model whose logits dominate


def test_each_stacked_rung_counts_as_used():
    view = view_after_oom()
    decision = decide(view)
    ladder = load_ladder(None)
    names = [ladder.rungs[i].name for i in decision.rung_indices]
    assert names == ["bf16", "halve_batch"]


def test_when_one_rung_is_enough_the_decision_is_the_ladders_own_next_rung():
    view = view_after_oom(failed_batch=(16, 64))
    ladder = load_ladder(None)
    plain = next_plan(ladder, view.final_plan, view.facts, view.attempts[-1].failure, {})
    decision = decide(view, ladder)
    assert decision.rung == plain.rung == "bf16" and decision.plan == plain.plan


def test_without_a_model_report_the_ladder_walks_one_rung_at_a_time():
    view = view_after_oom(model=None)
    assert fit_for(view, CAP) is None
    assert decide(view).rung == "bf16"


def test_without_a_device_size_the_ladder_walks_one_rung_at_a_time():
    view = view_after_oom()
    assert fit_for(view, None) is None  # the CPU, uncapped: nothing to fit in


def test_an_evaluation_oom_only_changes_the_evaluation_batch():
    decision = decide(view_after_oom(phase="eval"))
    assert decision.rung == "halve_eval_batch"


def test_the_calibration_adds_what_a_step_that_ran_measured_beyond_the_estimate():
    view = view_after_oom(step_peak=400 * 2**20, failed_batch=(16, 256))
    ran = estimate_for(view, view.attempts[0].plan, [16, 32]).peak
    assert calibration(view, usable(CAP, "cpu", capped=True)) == 400 * 2**20 - ran


def test_an_oom_proves_the_need_was_above_the_device_whatever_the_steps_measured():
    view = view_after_oom(step_peak=1, failed_batch=(16, 64))  # estimated to fit, yet it did not
    capacity = usable(CAP, "cpu", capped=True)
    failed = estimate_for(view, view.attempts[0].plan, [16, 64]).peak
    assert failed < capacity
    assert calibration(view, capacity) == capacity + 1 - failed
    assert fit_for(view, CAP).need(view.final_plan) > capacity  # so the next decision climbs, never stays


def test_an_ooms_own_numbers_are_a_lower_bound_on_what_the_plan_needed():
    """What the worker held when the allocation failed, plus the allocation, is more than the device had."""
    view = view_after_oom(step_peak=1, failed_batch=(16, 64), peak=1100 * 2**20, tried=500 * 2**20)
    failed = estimate_for(view, view.attempts[0].plan, [16, 64]).peak
    capacity = usable(CAP, "cpu", capped=True)
    assert calibration(view, capacity) == 1600 * 2**20 - failed
    assert fit_for(view, CAP).need(view.final_plan) == 1600 * 2**20


def in_place_floor(tries, seq=256):
    """The view after a step-1 OOM that in-place recovery split down to a row per chunk, each chunk running out."""
    view = view_after_oom(step_peak=None, failed_batch=(16, seq))
    view.attempts[0].in_place.append(InPlaceRecord.of(
        {"type": "in_place", "ts": 3.5, "attempt": 1, "outcome": "floor", "step": 1, "split_before": 1, "split": 16,
         "rows": 16, "seq": seq, "batch": 16, "accumulation": 1, "ooms": len(tries),
         "tries": [{"rows": r, "held": h, "tried": t} for r, h, t in tries]}))
    return view


def test_each_in_place_oom_is_a_lower_bound_on_the_plan_with_its_chunk_as_micro_batch():
    """A row per chunk that still ran out proves more than the 16 rows' OOM: the OOM struck further into the step."""
    mib = 2**20
    view = in_place_floor([(16, 380 * mib, 510 * mib), (1, 1200 * mib, 31 * mib)])
    capacity = usable(CAP, "cpu", capped=True)
    one_row = estimate_for(view, view.attempts[0].plan.replace(per_device_train_batch_size=1), [1, 256]).peak
    assert calibration(view, capacity) == 1231 * mib - one_row
    # The plan the floor would have run, the program's at a micro-batch of 1, is proven not to fit.
    assert fit_for(view, CAP).need(view.final_plan.replace(per_device_train_batch_size=1)) == 1231 * mib


def test_an_in_place_oom_without_its_numbers_still_proves_the_need_was_above_the_device():
    view = in_place_floor([(1, None, None)])
    capacity = usable(CAP, "cpu", capped=True)
    one_row = estimate_for(view, view.attempts[0].plan.replace(per_device_train_batch_size=1), [1, 256]).peak
    assert calibration(view, capacity) == max(0, capacity + 1 - one_row)


def test_trls_sft_trainer_is_estimated_with_the_logits_size_tensors_its_metrics_keep():
    plain = view_after_oom(model=MODEL)
    sft = view_after_oom(model={**MODEL, "trainer": "trl.trainer.sft_trainer.SFTTrainer"})
    plan = plain.attempts[0].plan.replace(per_device_train_batch_size=4)
    logits = [estimate_for(view, plan, [4, 256]).parts[Term.LOGITS] for view in (sft, plain)]
    extra = logits[0] - logits[1]
    assert extra == 4 * 256 * 32000 * 20  # five fp32 tensors the logits' size, per token


def test_when_nothing_is_estimated_to_fit_everything_worth_its_cost_is_tried():
    decision = decide(view_after_oom(failed_batch=(16, 8192)))
    assert "still estimated above" in decision.reason
    assert decision.plan.per_device_train_batch_size == 1 and decision.plan.gradient_checkpointing


def test_the_estimate_for_another_plan_uses_its_micro_batch_and_the_failed_sequence_length():
    view = view_after_oom()
    sixteen = estimate_for(view, Plan(per_device_train_batch_size=16), [16, 256])
    eight = estimate_for(view, Plan(per_device_train_batch_size=8), [16, 256])
    assert eight.parts[Term.LOGITS] * 2 == sixteen.parts[Term.LOGITS]


def test_a_fragmented_cuda_oom_gets_the_allocator_rung_alone_whatever_the_estimate():
    view = view_after_oom()
    facts = replace(view.facts, device="cuda")
    fragmented = Failure(Kind.CUDA_OOM, "device", "CUDA out of memory", phase="train", step=2,
                         numbers={"tried_to_allocate": 2**30, "reserved_unallocated": 3 * 2**30,
                                  "total_capacity": 16 * 2**30})
    decision = climb_to_fit(load_ladder(None), view.final_plan, facts, fragmented, {}, fit_for(view, CAP))
    assert decision.rung == "expandable_segments" and decision.rung_indices == (0,)


# The full fine-tune of issue 16: 34M parameters in fp32, AdamW, sequences of 16 at batch 2. Adam's moments are
# half of the peak; no rung that shrinks activations can help.
FULL_34M = {"shape": {"layers": 10, "hidden": 512, "intermediate": 1376, "heads": 8, "kv_heads": 8, "vocab": 2000,
                      "linear_params": 31621120, "embedding_params": 1024000, "head_params": 1024000,
                      "other_params": 10752, "dtype": "float32", "attention": "sdpa"},
            "adapters": False, "trainable_params": 33679872, "lora_targets": []}


def full_fine_tune_after_oom(optim="adamw_torch", failed_batch=(2, 16)):
    program = {**PROGRAM, "per_device_train_batch_size": 2, "optim": optim, "fused_cross_entropy": False,
               "activation_offloading": False}
    facts = {"device": "cpu", "bf16_supported": True, "base_frozen": False, "trainable_fraction": 1.0}
    return view_after_oom(model=FULL_34M, step_peak=None, failed_batch=failed_batch, program=program, facts=facts)


def test_where_optimizer_states_dominate_the_decision_is_8bit_adam_and_says_why():
    decision = decide(full_fine_tune_after_oom(), cap=500 * 2**20)
    assert decision.rung == "optimizer_8bit" and decision.plan.optim == "adamw_bnb_8bit"
    assert decision.estimate["dominant"] is Term.OPTIMIZER_STATES
    assert set(decision.estimate["split"]) >= {Term.WEIGHTS, Term.OPTIMIZER_STATES, Term.GRADIENTS}
    assert decision.reason.startswith("optimizer states are 50 % of the estimated peak: ")  # as a person reads it
    skipped = dict(decision.skipped)
    assert "passed over" in skipped["bf16"]  # bf16 autocast adds weight copies where activations are tiny


def test_where_no_rung_saves_a_real_share_the_ones_that_save_anything_are_taken_not_the_next_in_line():
    """8-bit Adam already, and a cap far below the weights: each rung saves a sliver of what is missing. The
    ladder is not walked one attempt per rung, bf16 first, which the estimate sees adding memory here."""
    view = full_fine_tune_after_oom(optim="adamw_bnb_8bit", failed_batch=(2, 160))
    plain = next_plan(load_ladder(None), view.final_plan, view.facts, view.attempts[-1].failure, {})
    decision = decide(view, cap=20 * 2**20)
    assert plain.rung == "bf16" and decision.estimate is not None
    assert "bf16" not in decision.rung and "halve_batch" in decision.rung
    assert "still estimated above" in decision.reason and "estimated to add" in dict(decision.skipped)["bf16"]
