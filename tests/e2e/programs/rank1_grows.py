"""supervisor/demo/train_tiny.py, except that only rank 1's sequences grow: an OOM on rank 1 alone,
while rank 0 waits for it in a collective."""

import os

import torch

from oomladder.demo import train_tiny


class Rank1Grows(train_tiny.GrowingSequences):
    def __getitem__(self, i):
        grows = os.environ.get("RANK") == "1" and i >= self.grow_at
        length = self.long_len if grows else self.short_len
        ids = torch.randint(0, self.vocab, (length,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids.clone()}


if __name__ == "__main__":
    train_tiny.GrowingSequences = Rank1Grows
    train_tiny.main()
