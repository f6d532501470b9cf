"""What killed a worker: a pure function from what it left behind to a `Failure`.

Evidence is read in order of trust, as PyTorch's elastic agent does: the structured failure
record the worker adapter wrote, then the tail of stderr, then the exit status. Each known
signature is matched against the message text PyTorch, CUDA, NCCL and friends really print
(tests/test_classify.py holds one real text per signature).
"""

from __future__ import annotations

import dataclasses
import enum
import re
import signal
from dataclasses import dataclass, field
from typing import Any

_SIZE_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "bytes": 1}


class Kind(str, enum.Enum):
    CUDA_OOM = "cuda_oom"                  # the caching allocator, every PyTorch wording
    CUDA_DRIVER_OOM = "cuda_driver_oom"    # "CUDA error: out of memory" from a kernel or the driver
    CUBLAS_ALLOC = "cublas_alloc"
    CUDNN_ALLOC = "cudnn_alloc"
    NCCL_OOM = "nccl_oom"
    MPS_OOM = "mps_oom"
    HIP_OOM = "hip_oom"
    XPU_OOM = "xpu_oom"
    CPU_OOM = "cpu_oom"                    # PyTorch's CPU allocator (the emulated device under --memory-cap)
    MMAP_FAILED = "mmap_failed"            # a checkpoint file that could not be mapped while the model loads
    OFFLOADED = "offloaded"                # from_pretrained put weights on the CPU or disk (with --no-offload)
    ONEDNN_PRIMITIVE = "onednn_primitive"  # oneDNN fails to build a kernel when the cap leaves no room
    PYTHON_MEMORY_ERROR = "python_memory_error"
    DATALOADER_KILLED = "dataloader_killed"
    HOST_OOM_KILL = "host_oom_kill"        # SIGKILL with the cgroup's oom_kill counter as evidence
    KILLED = "killed"                      # SIGKILL without evidence: not guessed to be memory
    CRASHED = "crashed"                    # another fatal signal (SIGSEGV, SIGABRT, ...)
    INTERRUPTED = "interrupted"            # SIGINT / SIGTERM from outside
    HANG = "hang"                          # no progress for --hang-timeout: stopped by the supervisor
    TRANSIENT = "transient"                # the infrastructure blinked (collective timeout, reset connection)
    LAUNCH_FAILED = "launch_failed"        # the command could not be started
    ERROR = "error"                        # an ordinary exception: a bug no memory setting fixes
    UNKNOWN = "unknown"                    # non-zero exit and nothing else to go on


@dataclass(frozen=True)
class Evidence:
    """What a dead worker left behind."""

    returncode: int
    record: dict[str, Any] | None = None   # the adapter's failure record, if it wrote one
    stderr_tail: str = ""
    capped: bool = False                   # ran under --memory-cap on the CPU
    cgroup_oom_kill: bool = False          # the cgroup counted an OOM kill during the attempt


@dataclass(frozen=True)
class Failure:
    kind: Kind
    memory: str | None                     # "device", "host", or None when memory is not the cause
    summary: str                           # one line a person can read
    phase: str | None = None               # "train" or "eval", when the record says
    step: int | None = None
    numbers: dict[str, int] = field(default_factory=dict)  # parsed from the OOM message
    rank: int | None = None                # the rank whose record this is, under a distributed launcher

    @property
    def is_memory(self) -> bool:
        return self.memory is not None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "memory": self.memory, "summary": self.summary,
                "phase": self.phase, "step": self.step, "numbers": dict(self.numbers), "rank": self.rank}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        return cls(kind=Kind(data["kind"]), memory=data.get("memory"), summary=data.get("summary", ""),
                   phase=data.get("phase"), step=data.get("step"), numbers=data.get("numbers") or {},
                   rank=data.get("rank"))


# (kind, pattern, memory domain). Order only matters for ties: the match latest in the text wins.
_SIGNATURES: list[tuple[Kind, re.Pattern[str], str | None]] = [
    (Kind.CUDA_OOM, re.compile(r"CUDA out of memory\.|\bOut of memory\. Tried to allocate"), "device"),
    (Kind.HIP_OOM, re.compile(r"HIP out of memory\.|HIP error: out of memory|hipErrorOutOfMemory"), "device"),
    (Kind.XPU_OOM, re.compile(r"XPU out of memory\."), "device"),
    (Kind.MPS_OOM, re.compile(r"MPS backend out of memory"), "device"),
    # NCCL's own WARN format ("Cuda failure 'out of memory'", or "Cuda failure 2 '...'" from the driver API),
    # which torch repeats under "Last error:".
    (Kind.NCCL_OOM, re.compile(r"Cuda failure(?: \d+)? 'out of memory'"), "device"),
    (Kind.CUDA_DRIVER_OOM, re.compile(r"CUDA error: out of memory"), "device"),
    (Kind.CUBLAS_ALLOC, re.compile(r"CUBLAS_STATUS_ALLOC_FAILED"), "device"),
    (Kind.CUDNN_ALLOC, re.compile(r"CUDNN_STATUS_ALLOC_FAILED"), "device"),
    (Kind.CPU_OOM, re.compile(r"DefaultCPUAllocator: (?:can't|not enough memory)"), "cpu"),
    # torch mapping a checkpoint file; safetensors' own mapping fails as a MemoryError (below)
    (Kind.MMAP_FAILED, re.compile(r"unable to mmap \d+ bytes from file .*Cannot allocate memory"), "cpu"),
    # oomladder's own (--no-offload), and Transformers refusing to quantize a model that does not fit the device
    (Kind.OFFLOADED, re.compile(r"oomladder: --no-offload: |Some modules are dispatched on the CPU or the disk\. "
                                r"Make sure you have enough GPU RAM to fit the quantized model"), "device"),
    (Kind.ONEDNN_PRIMITIVE, re.compile(r"could not create a primitive"), "cpu-capped"),
    (Kind.PYTHON_MEMORY_ERROR, re.compile(r"^(?:\w+\.)*(?!OutOfMemoryError)\w*MemoryError\b|std::bad_alloc", re.M),
     "cpu"),
    (Kind.DATALOADER_KILLED,
     re.compile(r"DataLoader worker \(pid\(?s?\)? [\d, ]+\) (?:is killed by signal|exited unexpectedly)"), "host"),
]

# Exceptions that only say "see above": the cause is in the log before them (Transformers 5 logs each weight
# conversion that failed, with its exception, in a loading report, then raises this).
_SEE_ABOVE = re.compile(r"We encountered some issues during automatic conversion of the weights")

# Failures of the infrastructure rather than of the program or its memory: the same plan, later, may pass.
_TRANSIENT = re.compile(
    r"Watchdog caught collective operation timeout|NCCL communicator was aborted|RendezvousTimeoutError"
    r"|RendezvousConnectionError|DistNetworkError|Connection reset by peer|ConnectionResetError"
    r"|Connection closed by peer"
    r"|socket timed out|requests\.exceptions\.(?:ConnectionError|ReadTimeout)|httpx\.(?:ConnectError|ReadTimeout)")

# What a rank raises when a peer of its collective died: not its own failure, the peer's.
_PEER_DIED = re.compile(r"Connection closed by peer|Connection reset by peer|NCCL communicator was aborted"
                        r"|remote process exited or there was a network error")


def peer_died(message: str) -> bool:
    """Whether an exception's text says a peer of the collective died (gloo, NCCL)."""
    return bool(_PEER_DIED.search(message))


_SUMMARIES = {
    Kind.CUDA_OOM: "CUDA out of memory", Kind.CUDA_DRIVER_OOM: "CUDA driver out of memory",
    Kind.CUBLAS_ALLOC: "cuBLAS could not allocate its workspace", Kind.CUDNN_ALLOC: "cuDNN could not allocate",
    Kind.NCCL_OOM: "NCCL out of memory", Kind.MPS_OOM: "MPS out of memory", Kind.HIP_OOM: "HIP (ROCm) out of memory",
    Kind.XPU_OOM: "XPU out of memory", Kind.CPU_OOM: "CPU allocator out of memory",
    Kind.MMAP_FAILED: "the checkpoint file could not be mapped",
    Kind.OFFLOADED: "weights were offloaded off the device",
    Kind.ONEDNN_PRIMITIVE: "oneDNN could not create a kernel (no memory left under the cap)",
    Kind.PYTHON_MEMORY_ERROR: "MemoryError", Kind.DATALOADER_KILLED: "a DataLoader worker was killed",
}


def classify(evidence: Evidence) -> Failure:
    """The `Failure` that best explains `evidence`. Never raises."""
    failure = _classify(evidence)
    rank = (evidence.record or {}).get("rank")
    world = (evidence.record or {}).get("world_size") or 1
    return dataclasses.replace(failure, rank=rank) if rank is not None and world > 1 else failure


def _classify(evidence: Evidence) -> Failure:
    record = evidence.record or {}
    phase, step = record.get("phase"), record.get("step")
    # The record names the exception that killed the worker; stderr may also hold OOMs it survived.
    # Explicit causes (`raise X from oom`) count as part of it.
    if record.get("exc_type"):
        text = "\n".join([f"{record['exc_type']}: {record.get('message', '')}", *record.get("causes", [])])
    else:
        text = evidence.stderr_tail
    found = _match(text, evidence.capped)
    if not found and record.get("exc_type") and _SEE_ABOVE.search(text):
        text = evidence.stderr_tail  # the report the exception points at
        found = _match(text, evidence.capped)
    if found:
        kind, memory = found
        return Failure(kind, memory, _summary(kind, text), phase, step, parse_numbers(text))
    transient = _TRANSIENT.search(text)
    if transient:
        return Failure(Kind.TRANSIENT, None, f"a transient infrastructure failure ({transient.group(0)})", phase, step)
    if record.get("exc_type"):
        # The worker raised, and it is no memory signature: a bug, whatever the ladder could change.
        line = f"{record['exc_type']}: {record.get('message', '')}".strip().rstrip(":")
        return Failure(Kind.ERROR, None, _one_line(line), phase, step)
    return _from_exit_status(evidence, phase, step)


def _match(text: str, capped: bool) -> tuple[Kind, str | None] | None:
    best: tuple[int, Kind, str | None] | None = None
    for kind, pattern, domain in _SIGNATURES:
        for m in pattern.finditer(text):
            memory = _domain(domain, capped)
            if memory is None and kind is Kind.ONEDNN_PRIMITIVE:
                continue  # without a cap, oneDNN failing is not a memory problem we can fix
            if best is None or m.start() >= best[0]:
                best = (m.start(), kind, memory)
    return (best[1], best[2]) if best else None


def _domain(domain: str | None, capped: bool) -> str | None:
    # Under --memory-cap the CPU stands in for the device: its allocator failing is the emulated OOM.
    if domain == "cpu":
        return "device" if capped else "host"
    if domain == "cpu-capped":
        return "device" if capped else None
    return domain


def _from_exit_status(evidence: Evidence, phase: str | None, step: int | None) -> Failure:
    code = evidence.returncode
    last = _last_line(evidence.stderr_tail)
    if (signum := signal_of(code)) is not None:
        name = _signal_name(signum)
        if signum == signal.SIGKILL:
            if evidence.cgroup_oom_kill:
                return Failure(Kind.HOST_OOM_KILL, "host", "killed by the kernel's OOM killer (cgroup memory.events)",
                               phase, step)
            return Failure(Kind.KILLED, None, "killed by SIGKILL with no sign of why (no OOM kill recorded)",
                           phase, step)
        if signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            return Failure(Kind.INTERRUPTED, None, f"stopped by {name}", phase, step)
        if code < 0:
            return Failure(Kind.CRASHED, None, f"crashed with {name}" + (f" after: {last}" if last else ""),
                           phase, step)
    if last and re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", last):
        return Failure(Kind.ERROR, None, _one_line(last), phase, step)
    return Failure(Kind.UNKNOWN, None, f"exited with status {code}" + (f"; last line: {last}" if last else ""),
                   phase, step)


def _summary(kind: Kind, text: str) -> str:
    numbers = parse_numbers(text)
    base = _SUMMARIES[kind]
    if "tried_to_allocate" in numbers:
        from oomladder.units import format_size
        base += f": tried to allocate {format_size(numbers['tried_to_allocate'])}"
    return base


_UNIT = r"(bytes|B|KiB|MiB|GiB|TiB)"
# Each number's patterns in order of preference; the first that matches gives it.
_NUMBER_PATTERNS: dict[str, tuple[str, ...]] = {
    "tried_to_allocate": (rf"[Tt]ried to allocate ([\d.]+) ?{_UNIT}",),
    "total_capacity": (rf"([\d.]+) {_UNIT} total capacity", rf"total capac(?:i)?ty of ([\d.]+) {_UNIT}"),
    "free": (rf"of which ([\d.]+) {_UNIT} is free", rf"([\d.]+) {_UNIT} free"),
    "allocated_by_pytorch": (rf"([\d.]+) {_UNIT} already allocated", rf"([\d.]+) {_UNIT} is allocated by PyTorch"),
    "reserved_by_pytorch": (rf"([\d.]+) {_UNIT} reserved in total by PyTorch",),
    "reserved_unallocated": (rf"([\d.]+) {_UNIT} is reserved by PyTorch but unallocated",),
    # "this process" first: the message also lists the card's other processes ("Process 490 has 610.00 MiB").
    "process_in_use": (rf"this process has ([\d.]+) {_UNIT} memory in use",
                       rf"Process \d+ has ([\d.]+) {_UNIT} memory in use"),
}


def parse_numbers(text: str) -> dict[str, int]:
    """Byte counts from the last OOM message in `text` (what it tried, what was free, ...)."""
    start = max(text.rfind("out of memory"), text.rfind("can't allocate memory"), 0)
    tail = text[max(0, start - 200):]
    numbers: dict[str, int] = {}
    for name, patterns in _NUMBER_PATTERNS.items():
        m = next(filter(None, (re.search(p, tail) for p in patterns)), None)
        if m:
            value, unit = m.groups()
            numbers[name] = int(float(value) * _SIZE_UNITS[unit])
    if "reserved_unallocated" not in numbers and {"reserved_by_pytorch", "allocated_by_pytorch"} <= numbers.keys():
        numbers["reserved_unallocated"] = max(0, numbers["reserved_by_pytorch"] - numbers["allocated_by_pytorch"])
    return numbers


def is_fragmented(failure: Failure, share_of_device: float = 0.05) -> bool:
    """Enough memory reserved but unallocated to serve the request, and a real share of the device:
    the memory is there but in pieces, so the allocator setting alone may be enough."""
    reserved = failure.numbers.get("reserved_unallocated", 0)
    wanted = failure.numbers.get("tried_to_allocate", 0)
    total = failure.numbers.get("total_capacity", 0)
    return reserved > 0 and reserved >= wanted and reserved >= share_of_device * total


def signal_of(returncode: int | None) -> int | None:
    """The signal that ended a process, from its exit status: Popen's -N, or a shell's 128 + N."""
    if returncode is None or not (returncode < 0 or returncode > 128):
        return None
    return -returncode if returncode < 0 else returncode - 128


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
