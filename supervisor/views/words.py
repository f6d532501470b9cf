"""The journal's identifiers as a person reads them on a page: how a peak was measured (worker/memcap.py), and
what kind of failure ended an attempt (classify.Kind). An identifier not listed reads with its underscores
as spaces, never as code."""

from __future__ import annotations

MEASURES = {
    "cuda_max_allocated": "the most memory PyTorch's CUDA allocator had handed out at once",
    "address_space_over_baseline": "the address space the program grew by after its imports, which the CPU "
                                   "emulation of a device caps",
    "rss_over_baseline": "the resident memory the program grew by after its imports",
    "max_rss": "the program's peak resident memory",
}

FAILURES = {
    "cuda_oom": "out of memory on the GPU (PyTorch's CUDA allocator)",
    "cuda_driver_oom": "out of memory in a CUDA kernel or the driver",
    "cublas_alloc": "cuBLAS could not allocate its workspace",
    "cudnn_alloc": "cuDNN could not allocate its workspace",
    "nccl_oom": "NCCL ran out of memory",
    "mps_oom": "out of memory on Apple's GPU (MPS)",
    "hip_oom": "out of memory on the AMD GPU (HIP)",
    "xpu_oom": "out of memory on the Intel GPU (XPU)",
    "cpu_oom": "out of memory (PyTorch's CPU allocator)",
    "mmap_failed": "a checkpoint file could not be mapped into memory",
    "offloaded": "device_map put weights off the device",
    "onednn_primitive": "oneDNN had no memory left to build a kernel",
    "python_memory_error": "Python's MemoryError",
    "dataloader_killed": "a DataLoader worker was killed",
    "host_oom_kill": "killed by the kernel's out-of-memory killer",
    "killed": "killed (SIGKILL), with nothing to say why",
    "crashed": "crashed on a fatal signal",
    "interrupted": "interrupted from outside (SIGINT or SIGTERM)",
    "hang": "no progress (--hang-timeout)",
    "transient": "an infrastructure failure (a collective timed out, a connection reset)",
    "launch_failed": "the command could not be started",
    "error": "an error in the program",
    "unknown": "a non-zero exit, with nothing to say why",
}


def measure_words(measure: str) -> str:
    return MEASURES.get(measure, measure.replace("_", " "))


def failure_words(kind: str) -> str:
    return FAILURES.get(kind, kind.replace("_", " "))
