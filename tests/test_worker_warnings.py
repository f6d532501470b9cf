"""A worker's log holds the program's warnings, never one of oomladder's making: the adapter reads the model's
dtype without touching `config.torch_dtype`, and hands the checkpointing rung to the Trainer under the name the
installed Transformers knows (`activation_checkpointing` from Transformers 5 on; the old name warns)."""

import subprocess
import sys

from oomladder.process.launch import INJECT_DIR

PROGRAM = """
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments
config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=2)
model = LlamaForCausalLM(config)  # built from a config: its dtype is not set, as in many programs
args = TrainingArguments(output_dir=r"{out}", report_to="none", use_cpu=True)
name = "activation_checkpointing" if hasattr(args, "activation_checkpointing") else "gradient_checkpointing"
print("checkpointing", getattr(args, name), getattr(args, name + "_kwargs"))
from oomladder.worker.protocol import probe
print("dtype", probe.model_report(model)["shape"]["dtype"])
"""


def test_the_adapter_causes_no_deprecation_warning_in_the_programs_log(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(INJECT_DIR), "OOMLADDER_ATTEMPT_DIR": str(tmp_path),
           "OOMLADDER_PLAN": '{"gradient_checkpointing": true}', "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", PROGRAM.format(out=tmp_path / "out")], env=env,
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The plan reached the Trainer, and the shape was read ...
    assert "checkpointing True {'use_reentrant': False}" in result.stdout and "dtype float32" in result.stdout
    # ... without a word of warning: the program itself gave no deprecated name.
    assert "deprecated" not in result.stderr.lower(), result.stderr
