"""Fast-forward (worker/recovery/fast_forward.py): while a relaunched custom loop replays the steps an earlier attempt
trained, its model computes nothing it does not read, nothing it saves is written, and what it prints goes to the
attempt's fast-forward.log; afterwards the model is as it was. tests/e2e/test_frameworks.py runs a real accelerate
loop through a real OOM and checks the program's own step log, sample order and learning rates."""

import os

import torch

from oomladder.worker.recovery.fast_forward import LOG, FastForward


def causal_lm():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))


def test_a_causal_lm_gives_the_logged_loss_and_computes_logits_only_when_read(tmp_path, monkeypatch):
    monkeypatch.delenv("OOMLADDER_ATTEMPT_DIR", raising=False)
    model = causal_lm()
    ids = torch.randint(0, 50, (2, 5))
    real = model(input_ids=ids).logits
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    replay = FastForward([model], target=2, losses=[3.25, 2.5])
    replay.start()
    try:
        out = model(input_ids=ids, labels=ids)
        assert out.loss.item() == 3.25 and out[0].item() == 3.25 and calls == [1]  # the hook sees the call only
        replay.step = 1
        assert model(input_ids=ids).loss.item() == 2.5
        logits = out.logits  # read: computed then, without gradients
        torch.testing.assert_close(logits, real.detach())
        assert not logits.requires_grad
    finally:
        replay.stop()
    assert "forward" not in model.__dict__ and model(input_ids=ids).logits.requires_grad


PROGRAM = """
import os, torch
from oomladder.worker.recovery.fast_forward import FastForward
replay = FastForward([torch.nn.Linear(2, 2)], target=1, losses=[])
replay.start()
torch.save({"w": torch.zeros(1)}, "checkpoint.pt")
print("step 1, loss 0.5", flush=True)
os.write(2, b"a progress bar\\n")
replay.stop()
print("step 2, loss 0.4", flush=True)
torch.save({"w": torch.zeros(1)}, "after.pt")
"""


def test_nothing_is_saved_and_the_output_goes_to_its_log(tmp_path):
    """In a process of its own, as a worker is: its descriptors are the ones redirected."""
    import subprocess
    import sys
    env = {**os.environ, "OOMLADDER_ATTEMPT_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "checkpoint.pt").exists() and (tmp_path / "after.pt").exists()
    log = (tmp_path / LOG).read_text()
    assert "step 1, loss 0.5" in log and "a progress bar" in log and "not saved while fast-forwarding" in log
    assert done.stdout == "step 2, loss 0.4\n"
    assert "fast-forwarding the program through steps 1-1" in done.stderr and "progress bar" not in done.stderr
