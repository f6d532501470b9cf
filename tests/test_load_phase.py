"""An OOM while the model loads: only the rungs that change the load answer it, the estimate works from the
config's weights alone (no step ran), and under the CPU emulation a checkpoint whose files are mapped
while the weights fill may not load in any plan, which is said at once."""

from oomladder import strategies
from oomladder.classify import Failure, Kind
from oomladder.ladder import load_ladder
from oomladder.memory.foresight import climb_to_fit, fit_for, load_wall
from oomladder.plan import Facts, Plan
from oomladder.record.history import fold

# A 168M-parameter Llama saved in bf16 (a 321 MiB file), as examples/trainer_lora.py builds it.
CONFIG = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
          "num_key_value_heads": 16, "vocab_size": 32000, "tie_word_embeddings": False, "dtype": "bfloat16"}
LOAD = {"path": "m168", "config": CONFIG, "files_bytes": 336636200, "device_map": "None", "default_dtype": "bfloat16"}
OOM = Failure(Kind.CPU_OOM, "device", "CPU allocator out of memory", phase="load")
PEFT = Facts(device="cpu", adapters_expected=True)


def view(device="cpu", requested="float32", failure=OOM, device_memory=None):
    return fold([{"type": "run_started", "ts": 0.0, "command": ["python", "train.py"]},
                 {"type": "attempt_started", "ts": 1, "attempt": 1, "plan": {}, "rung": None, "reason": ""},
                 {"type": "observed", "ts": 1.1, "attempt": 1, "plan": {"load_dtype": requested,
                                                                        "quantization": "none"},
                  "facts": {"device": device, "adapters_expected": True, "device_memory": device_memory}, "load": LOAD},
                 {"type": "attempt_ended", "ts": 2, "attempt": 1, "outcome": "failed", "failure": failure.to_dict()}])


def test_only_the_rungs_that_change_the_load_answer_a_load():
    matching = sorted(name for name in strategies.available() if strategies.get(name)().matches(OOM))
    assert matching == ["bf16", "int8", "nf4"]


def test_bf16_loads_the_weights_in_bf16_and_trains_in_bf16_when_peft_was_imported():
    outcome = strategies.get("bf16")().apply(Plan(load_dtype="float32", quantization="none"), PEFT, OOM)
    assert (outcome.plan.load_dtype, outcome.plan.precision) == ("bfloat16", "bf16")
    full = strategies.get("bf16")().apply(Plan(load_dtype="float32"), Facts(adapters_expected=False), OOM)
    assert "the base weights train" in full.reason


def test_quantization_at_load_trusts_that_a_program_importing_peft_trains_adapters():
    assert strategies.get("int8")().apply(Plan(quantization="none"), PEFT, OOM).plan.quantization == "int8"
    refused = strategies.get("int8")().apply(Plan(quantization="none"), Facts(device="cpu", adapters_expected=False),
                                             OOM)
    assert "quantized weights cannot" in refused.reason


def test_on_a_card_the_load_estimate_takes_the_rungs_up_to_the_first_that_fits_at_once():
    """A 24 GiB card is far too big; on 320 MiB the weights alone decide: bf16 (321 MiB) is not enough, int8 is."""
    v = view(device="cuda", device_memory=320 * 2**20 + 512 * 2**20)  # the CUDA context is outside the weights
    decision = climb_to_fit(load_ladder(None), v.final_plan, v.facts, OOM, {}, fit_for(v, None))
    assert decision.rung == "bf16 + int8"
    assert decision.estimate["after"] <= decision.estimate["capacity"] < decision.estimate["before"]


def test_on_the_cpu_the_mapped_file_is_counted_and_a_checkpoint_that_cannot_load_is_said_at_once():
    fits_in_bf16 = view()
    assert load_wall(fits_in_bf16, 800 * 2**20) is None
    decision = climb_to_fit(load_ladder(None), fits_in_bf16.final_plan, fits_in_bf16.facts, OOM, {},
                            fit_for(fits_in_bf16, 800 * 2**20))
    assert decision.rung == "bf16"  # 642 MiB for 760 MiB usable; quantizing would not lower a CPU load
    wall = load_wall(view(), 600 * 2**20)
    assert wall.startswith("under the CPU emulation the checkpoint's files (321 MiB) are mapped")
    assert "at least 642 MiB, more than the 570 MiB usable" in wall


def test_an_offloaded_model_walks_the_load_rungs_one_at_a_time():
    offloaded = Failure(Kind.OFFLOADED, "device", "weights were offloaded off the device", phase="load")
    v = view(failure=offloaded, requested="bfloat16")
    assert fit_for(v, None) is None and load_wall(v, 600 * 2**20) is None
    assert climb_to_fit(load_ladder(None), v.final_plan, v.facts, offloaded, {}, None).rung == "int8"
