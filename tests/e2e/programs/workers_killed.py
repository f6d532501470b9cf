"""supervisor/demo/train_tiny.py whose DataLoader workers are killed when more than one of them runs past
--grow-at-step. It stands for the kernel's OOM killer, which kills a DataLoader worker when the workers'
copies of the dataset and prefetched batches together pass the host's memory (this sandbox has no memory
cgroup to make the kernel do it): the worker dies of SIGKILL, and the DataLoader's own error reaches the
program, as in a real night."""

import os
import signal

import torch

from oomladder.demo import train_tiny


class KilledWhenCrowded(train_tiny.GrowingSequences):
    def __getitem__(self, i):
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1 and i >= self.grow_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(i)


if __name__ == "__main__":
    train_tiny.GrowingSequences = KilledWhenCrowded
    train_tiny.main()
