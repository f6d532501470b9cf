"""How `--memory-cap` is counted on a CPU, and the allocator shim (oomcap.c) that counts it by default.

`auto` (the default) and `allocator` preload the shim, built once per machine with the C compiler found: compiled
at first use rather than shipped built, so the wheel stays one for every platform. Where it cannot be built, the
run falls back to the address-space cap and says so: slower, never wrong. `auto` also keeps the address-space cap
where the cap is a CUDA memory fraction (a GPU is present) and where the program preloads a library of its own (a
malloc replacement would be bypassed).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "oomcap.c"
MODES = ("auto", "allocator", "address-space")
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/kfd")  # NVIDIA's and AMD's: --memory-cap is a device fraction there


class Unavailable(Exception):
    """The shim cannot be built here; the message says why, in words for the console."""


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "oomladder"


def library() -> Path:
    """The built shim, compiled now if this source has not been built on this machine before."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + platform.machine().encode() + platform.libc_ver()[1].encode()).hexdigest()[:16]
    built = cache_dir() / f"liboomcap-{key}.so"
    if built.exists():
        return built
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        raise Unavailable(f"it needs Linux with glibc, and this is {platform.system()} "
                          f"{platform.libc_ver()[0] or 'without glibc'}")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise Unavailable("no C compiler was found to build it (install gcc, or set CC)")
    try:
        built.parent.mkdir(parents=True, exist_ok=True)
        # Built beside its final name and renamed: two runs starting at once each build one, and either is whole.
        fd, partial = tempfile.mkstemp(dir=built.parent, prefix=built.name, suffix=".partial")
        os.close(fd)
    except OSError as e:
        raise Unavailable(f"its folder {built.parent} cannot be written ({e.strerror or e}); set XDG_CACHE_HOME to "
                          f"one that can") from None
    try:
        done = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", partial, str(SOURCE)],
                              capture_output=True, text=True, timeout=120)
        failed = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["no message"])[-1]
    except (OSError, subprocess.TimeoutExpired) as e:
        failed = str(e)
    if failed is not None:
        os.unlink(partial)
        raise Unavailable(f"building it with {compiler} failed: {failed}")
    os.replace(partial, built)
    return built


def choose(mode: str, environ: Mapping[str, str]) -> tuple[Path | None, str | None]:
    """The shim to preload under `mode`, or None; and what to tell the person, where there is something to tell."""
    if mode == "address-space" or (mode == "auto" and any(os.path.exists(p) for p in GPU_DEVICE_NODES)):
        return None, None
    if mode == "auto" and environ.get("LD_PRELOAD"):
        return None, (f"the CPU cap counts the address space (1.2-1.6x slower): the program preloads "
                      f"{environ['LD_PRELOAD']}, which the allocator cap would bypass (--cpu-cap allocator to use it "
                      f"anyway)")
    try:
        return library(), None
    except Unavailable as exc:
        return None, f"the CPU cap counts the address space (1.2-1.6x slower): the allocator cap cannot be used: {exc}"


def preload(env: dict[str, str], shim: Path) -> None:
    """Load the shim first in the worker, before any library the program already preloads."""
    env["LD_PRELOAD"] = " ".join([str(shim)] + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else []))
