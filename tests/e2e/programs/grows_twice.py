"""supervisor/demo/train_tiny.py, except that its sequences grow twice: from --short-len to --long-len at
--grow-at-step, and to 4x --long-len two steps later. A plan that fits the first growth runs out of
memory at the second, so one run saves two emergency checkpoints, the second superseding the first."""

import sys

import torch

from oomladder.demo import train_tiny


class GrowsTwice(train_tiny.GrowingSequences):
    grow_at_step = 3

    def __getitem__(self, i):
        per_step = self.grow_at // (self.grow_at_step - 1)  # samples per optimizer step
        again = self.grow_at + 2 * per_step
        length = self.short_len if i < self.grow_at else self.long_len if i < again else 4 * self.long_len
        ids = torch.randint(0, self.vocab, (length,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids.clone()}


if __name__ == "__main__":
    if "--grow-at-step" in sys.argv:
        GrowsTwice.grow_at_step = int(sys.argv[sys.argv.index("--grow-at-step") + 1])
    train_tiny.GrowingSequences = GrowsTwice
    train_tiny.main()
