"""A folder laid out as a Hub download would leave it, for the programs that take names rather than objects (TRL's
CLI, a notebook): `model/` (the tiny Llama of supervisor/demo/train_tiny.py with a word-level tokenizer; nothing is
downloaded) and `data/train.jsonl`, a `text` column whose first half is short and second half 8 times longer. Read
in order (`train_sampling_strategy="sequential"`) at batch 16, steps 1-2 are short and steps 3-4 long: the step
that runs out of memory under a 1200MiB cap is step 3. `growing/train.jsonl` is the same but for its last quarter,
twice as long again: where batch 8 (the plan after one halving) runs out of memory in step 4."""

import argparse
import json
import os
import sys

import torch

ROWS, SHORT, LONG, VOCAB = 64, 32, 256, 32000


def build(folder):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from oomladder.demo.train_tiny import build_model

    model_dir = os.path.join(folder, "model")
    if not os.path.exists(os.path.join(model_dir, "tokenizer.json")):
        build_model(argparse.Namespace(model_dir=model_dir, vocab=VOCAB, hidden=256, intermediate=688, layers=4,
                                       heads=4))
        words = Tokenizer(WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, VOCAB)}},
                                    unk_token="<unk>"))
        words.pre_tokenizer = Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="</s>",
                                unk_token="<unk>").save_pretrained(model_dir)
    for name, lengths in (("data", (SHORT, LONG, LONG)), ("growing", (SHORT, LONG, 2 * LONG))):
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        with open(os.path.join(folder, name, "train.jsonl"), "w") as f:
            for i in range(ROWS):
                length = lengths[0] if i < ROWS // 2 else lengths[1] if i < 3 * ROWS // 4 else lengths[2]
                tokens = torch.randint(3, VOCAB, (length,), generator=torch.Generator().manual_seed(i))
                f.write(json.dumps({"text": " ".join(f"w{t}" for t in tokens.tolist())}) + "\n")
    return folder


if __name__ == "__main__":
    build(sys.argv[1])
