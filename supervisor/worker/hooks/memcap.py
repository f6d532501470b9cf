"""`--memory-cap` inside the worker: emulate a device of that size.

On CUDA it is `torch.cuda.set_per_process_memory_fraction`, so the caching allocator raises its
own OutOfMemoryError. On the CPU, by default (`--cpu-cap allocator`), the supervisor preloads a shim
(process/oomcap.c) that caps the bytes allocated once the frameworks are imported, armed here; under
`--cpu-cap address-space` it is an address-space limit of the worker's size then, plus the cap. Either
way PyTorch's CPU allocator fails with its real "DefaultCPUAllocator: can't allocate memory" error
where a smaller device would.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import resource
import sys
from functools import cache

from oomladder.worker.protocol import role
from oomladder.worker.state import STATE

# Imported before the limit is set: their code and libraries are the framework, not the workload.
_FRAMEWORK = ("transformers.trainer", "transformers.modeling_utils", "peft", "bitsandbytes", "accelerate")


def cap_bytes() -> int | None:
    value = os.environ.get("OOMLADDER_MEMORY_CAP")
    return int(value) if value else None


def arm() -> None:
    """Apply the cap once, as late as possible before the first model exists. Idempotent. Every way a process starts
    training comes here first, so this is also where it claims its role as a training process (protocol/role.py)."""
    role.claim()
    if STATE.memory_cap:
        return
    cap = cap_bytes()
    if not cap:  # nothing to limit; the resident size now is what the workload's peak is measured from
        STATE.memory_cap.update(mode="uncapped", baseline=_status_bytes("VmRSS"))
        return
    import torch
    if torch.cuda.is_available():
        device = int(os.environ.get("LOCAL_RANK", "0") or 0)
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
        STATE.memory_cap.update(mode="cuda_fraction", device_total=total)
        return
    if "transformers" in sys.modules:  # a Hugging Face program: its frameworks are overhead, not workload
        for name in _FRAMEWORK:
            try:
                importlib.import_module(name)
            except Exception:
                pass  # not installed or not importable: the program will not use it either
    torch.ones(64, 64) @ torch.ones(64, 64)  # start the intra-op threads: their stacks are overhead, not workload
    if (shim := _shim()) is not None:
        base = shim.oomcap_live()
        shim.oomcap_arm(cap)
        shim.oomcap_reset_peak()
        STATE.memory_cap.update(mode="cpu_allocator", baseline=base, limit=base + cap)
        return
    if os.environ.get("OOMLADDER_CPU_CAP") == "allocator":
        _device_like_malloc()  # the shim was asked for but is not in this process: the address-space cap after all
    base = vm_size()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = base + cap if hard == resource.RLIM_INFINITY else min(hard, base + cap)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    STATE.memory_cap.update(mode="cpu_address_space", baseline=base, limit=limit)


def lift_in_child() -> None:
    """In a DataLoader worker: host memory, which a device cap must not count. A forked child starts
    at its parent's size, so the parent's limit would leave it almost nothing."""
    if STATE.memory_cap.get("mode") == "cpu_address_space":
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    elif (shim := _armed_shim()) is not None:
        shim.oomcap_disarm()


def cpu_capped() -> bool:
    return STATE.memory_cap.get("mode") in ("cpu_address_space", "cpu_allocator")


@cache
def _shim() -> ctypes.CDLL | None:
    """The allocator shim's functions, where `--cpu-cap allocator` preloaded it into this process."""
    if os.environ.get("OOMLADDER_CPU_CAP") != "allocator":
        return None
    lib = ctypes.CDLL(None)  # the process's own symbols: the preloaded shim's among them
    if not hasattr(lib, "oomcap_arm"):
        return None
    for name in ("oomcap_live", "oomcap_peak"):
        getattr(lib, name).restype = ctypes.c_long
    lib.oomcap_arm.argtypes = [ctypes.c_long]
    return lib


def _device_like_malloc() -> None:
    """process/launch.py's CPU_DEVICE_ALLOCATOR, set from inside: large blocks mapped on their own, 2 arenas."""
    libc = ctypes.CDLL(None)
    libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-8, 2)  # M_ARENA_MAX


def peak() -> tuple[int | None, str | None]:
    """(bytes, what was measured): the peak that counts against the cap, or the best stand-in; the attempt's
    whole, across the per-step resets of `step_begin`."""
    torch = sys.modules.get("torch")  # never import it here: the program may not use it
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return max(int(torch.cuda.max_memory_allocated()), STATE.peak_before_reset["cuda"]), "cuda_max_allocated"
    except Exception:
        pass
    if STATE.memory_cap.get("mode") == "cpu_address_space":
        return max(0, _status_bytes("VmPeak") - int(STATE.memory_cap["baseline"])), "address_space_over_baseline"
    if (shim := _armed_shim()) is not None:
        high = max(shim.oomcap_peak(), STATE.peak_before_reset.get("allocated", 0))
        return max(0, high - int(STATE.memory_cap["baseline"])), "allocated_over_baseline"
    high = max(_status_bytes("VmHWM"), STATE.peak_before_reset["rss"])
    if STATE.memory_cap.get("mode") == "uncapped":
        return max(0, high - int(STATE.memory_cap["baseline"])), "rss_over_baseline"
    return high, "max_rss"



def _cuda():
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch
    except Exception:
        pass
    return None


def step_begin() -> int | None:
    """Before a micro-step: reset the high-water mark `step_peak` reads, and return what is held now in its units
    (allocated on CUDA, resident on the CPU); None where it cannot be measured."""
    torch = _cuda()
    if torch is not None:
        STATE.peak_before_reset["cuda"] = max(STATE.peak_before_reset["cuda"], int(torch.cuda.max_memory_allocated()))
        torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.memory_allocated())
    if (shim := _armed_shim()) is not None:
        STATE.peak_before_reset["allocated"] = max(STATE.peak_before_reset.get("allocated", 0), shim.oomcap_peak())
        shim.oomcap_reset_peak()
        return int(shim.oomcap_live())
    try:
        STATE.peak_before_reset["rss"] = max(STATE.peak_before_reset["rss"], _status_bytes("VmHWM"))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the resident size now
    except OSError:
        return None
    return _status_bytes("VmRSS")


def step_peak() -> int | None:
    """The high-water mark since `step_begin`, in its units."""
    torch = _cuda()
    if torch is not None:
        return int(torch.cuda.max_memory_allocated())
    if (shim := _armed_shim()) is not None:
        return int(shim.oomcap_peak())
    return _status_bytes("VmHWM") or None


def available() -> int | None:
    """Bytes a micro-step may take on top of what is held now before the emulated (or real) device runs out;
    None where nothing bounds it (the CPU without a cap)."""
    torch = _cuda()
    if torch is not None:
        free, total = torch.cuda.mem_get_info()
        reserved, allocated = torch.cuda.memory_reserved(), torch.cuda.memory_allocated()
        limit = cap_bytes() if STATE.memory_cap.get("mode") == "cuda_fraction" else None
        room = free if limit is None else min(free, max(0, limit - reserved))
        return int(room + reserved - allocated)
    if STATE.memory_cap.get("mode") == "cpu_address_space":
        return max(0, int(STATE.memory_cap["limit"]) - vm_size())
    if (shim := _armed_shim()) is not None:
        return max(0, int(STATE.memory_cap["limit"]) - shim.oomcap_live())
    return None


def held() -> int | None:
    """What the workload holds now, in `peak()`'s units: allocated on CUDA, the address space over the baseline
    under the CPU cap. None where nothing is measured against a limit."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.memory_allocated())
    except Exception:
        return None
    if STATE.memory_cap.get("mode") == "cpu_address_space":
        return max(0, vm_size() - int(STATE.memory_cap["baseline"]))
    if (shim := _armed_shim()) is not None:
        return max(0, shim.oomcap_live() - int(STATE.memory_cap["baseline"]))
    return None


def _armed_shim() -> ctypes.CDLL | None:
    return _shim() if STATE.memory_cap.get("mode") == "cpu_allocator" else None


def info() -> dict[str, int | str]:
    return dict(STATE.memory_cap)


def vm_size() -> int:
    return _status_bytes("VmSize")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0
