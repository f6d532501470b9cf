"""Real CUDA out-of-memory texts, captured where they happen: `python -m benchmarks.cuda_texts --out DIR`.

The classifier is tested on real message text (tests/fixtures/oom_messages.md). This collects the
texts this machine's PyTorch, Transformers and bitsandbytes print when memory runs out in each
phase a training program goes through: plain allocation (under a memory fraction, with
expandable segments, on a card that is really full), the model's load (`from_pretrained` straight
to the GPU, in 8-bit and 4-bit), its move to the GPU (`.to`), and cuBLAS on a full card. Each
case runs in a process of its own; the last lines of its stderr go to DIR/cuda_texts.md with
the kind oomladder's classifier gives them. Needs a CUDA GPU; about a minute.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

GiB = 2**30


def _fraction(limit: int) -> None:
    import torch
    torch.cuda.set_per_process_memory_fraction(limit / torch.cuda.get_device_properties(0).total_memory, 0)


def _fill(chunk: int) -> list:
    """Take the device's memory `chunk` bytes at a time until the allocator refuses; the refusal is raised."""
    import torch
    held = []
    while True:
        held.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))


def _fill_quietly(chunk: int) -> list:
    import torch
    held = []
    for size in (chunk, chunk // 8, 64 * 2**20, 2**20):
        while True:
            try:
                held.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
            except torch.OutOfMemoryError:
                break
    return held


def _model_dir() -> str:
    return os.environ["CUDA_TEXTS_MODEL"]


def case_alloc_fraction() -> None:
    _fraction(2 * GiB)
    _fill(256 * 2**20)


def case_alloc_expandable() -> None:
    # PYTORCH_ALLOC_CONF is set by the parent for this case.
    _fraction(2 * GiB)
    _fill(256 * 2**20)


def case_alloc_card_full() -> None:
    _fill(8 * GiB)


def case_cublas_card_full() -> None:
    import torch
    a = torch.ones(256, 256, device="cuda", dtype=torch.bfloat16)
    held = _fill_quietly(8 * GiB)
    print(f"held {sum(t.numel() for t in held) / GiB:.1f} GiB", file=sys.stderr)
    (a @ a).sum().item()  # first matmul: cuBLAS makes its handle and workspace now


def case_new_kernel_card_full() -> None:
    import torch
    x = torch.ones(1024, device="cuda")
    held = _fill_quietly(8 * GiB)
    print(f"held {sum(t.numel() for t in held) / GiB:.1f} GiB", file=sys.stderr)
    torch.cuda.empty_cache()  # nothing cached: any new allocation must come from the driver
    torch.sort(x.flip(0))[0].sum().item()


def case_from_pretrained_fp32() -> None:
    import torch
    from transformers import AutoModelForCausalLM
    _fraction(1 * GiB)
    AutoModelForCausalLM.from_pretrained(_model_dir(), dtype=torch.float32, device_map="cuda")


def case_from_pretrained_int8() -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    _fraction(256 * 2**20)
    AutoModelForCausalLM.from_pretrained(_model_dir(), quantization_config=BitsAndBytesConfig(load_in_8bit=True),
                                         device_map="cuda")


def case_from_pretrained_nf4() -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    _fraction(160 * 2**20)
    AutoModelForCausalLM.from_pretrained(_model_dir(), quantization_config=BitsAndBytesConfig(load_in_4bit=True),
                                         device_map="cuda")


def case_to_device() -> None:
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(_model_dir(), dtype=torch.float32)
    _fraction(1 * GiB)
    model.to("cuda")


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}
ENV = {"alloc_expandable": {"PYTORCH_ALLOC_CONF": "expandable_segments:True",
                            "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}}


def _build(model_dir: Path) -> None:
    """A 0.4B Llama saved in fp32 (1.6 GB): too big for a 1 GiB fraction in fp32, as a 7B model is for a 24 GB card."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
                         num_attention_heads=16, num_key_value_heads=16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    model.save_pretrained(model_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--one", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        CASES[args.one]()
        print("no error", file=sys.stderr)
        return 0
    from oomladder.classify import Evidence, classify

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = out / "cuda_texts.md"
    with tempfile.TemporaryDirectory(prefix="oomladder-cuda-texts-") as tmp:
        model_dir = Path(tmp) / "model"
        _build(model_dir)
        lines = ["# Real CUDA out-of-memory texts (python -m benchmarks.cuda_texts)", ""]
        for name in CASES:
            env = {**os.environ, "CUDA_TEXTS_MODEL": str(model_dir), "PYTHONUNBUFFERED": "1", **ENV.get(name, {})}
            try:
                done = subprocess.run([sys.executable, "-m", "benchmarks.cuda_texts", "--out", str(out), "--one", name],
                                      capture_output=True, text=True, timeout=120, env=env)
                code, stderr = done.returncode, done.stderr
            except subprocess.TimeoutExpired as exc:
                code = "timeout"
                stderr = ((exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes)
                          else (exc.stderr or ""))
            tail = "\n".join(stderr.splitlines()[-25:])
            failure = classify(Evidence(returncode=code if isinstance(code, int) else 1, stderr_tail=stderr[-8000:]))
            lines += [f"## {name}", "", f"exit {code}; classified {failure.kind.value} ({failure.memory}): "
                      f"{failure.summary}; numbers {failure.numbers}", "", "```", tail, "```", ""]
            report.write_text("\n".join(lines))  # as it goes: a killed run still leaves what it saw
            print(f"{name}: exit {code}, {failure.kind.value}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
