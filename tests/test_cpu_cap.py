"""`--cpu-cap allocator`, the default where it can be built: the CPU emulation of a device that counts what the
program has allocated (process/oomcap.c, preloaded and armed by worker/hooks/memcap.py), not its address space.

It must fail where a device of the cap's size would, with PyTorch's own error, and nowhere else: freed memory is free
again, weights mapped from a file count, a forked DataLoader worker's host memory does not. Real processes and real
allocations; the run it makes end to end is tests/e2e/test_cpu_cap.py's."""

import json
import os
import re
import subprocess
import sys
import textwrap
from itertools import count

import pytest

from oomladder.classify import Evidence, Kind, classify
from oomladder.ladder import parse_ladder
from oomladder.plan import Plan
from oomladder.process import allocator
from oomladder.process.launch import INJECT_DIR, worker_env
from oomladder.record.journal import read_journal
from oomladder.run import RunConfig, Runner
from tests.conftest import FakeDisplay, oomladder_argv
from tests.test_runner import ScriptedWorkers, finish, oom_at

MiB = 1 << 20


@pytest.fixture(scope="module")
def shim():
    try:
        return allocator.library()
    except allocator.Unavailable as exc:  # the machine has no C compiler: the fallback is tested below
        pytest.skip(f"the allocator shim cannot be built here: {exc}")


def capped(tmp_path, program, cap_mib, preload=None):
    """`program` in a fresh Python under `--memory-cap cap_mib` as a worker gets it; what it printed last, as JSON."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(INJECT_DIR), "OOMLADDER_ATTEMPT_DIR": str(tmp_path),
           "OOMLADDER_MEMORY_CAP": str(cap_mib * MiB), "OOMLADDER_CPU_CAP": "allocator", "OMP_NUM_THREADS": "1",
           **({"LD_PRELOAD": str(preload)} if preload else {})}
    head = "import json, os, torch\nfrom oomladder.worker.hooks import memcap\nmemcap.arm()\nMiB = 1 << 20\n"
    done = subprocess.run([sys.executable, "-c", head + textwrap.dedent(program)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_it_fails_where_a_device_of_the_cap_s_size_would_with_pytorch_s_own_error(tmp_path, shim):
    seen = capped(tmp_path, """
        out = {"mode": memcap.info()["mode"]}
        weights = torch.ones(120 * MiB // 4)
        out["held"] = memcap.held()
        for _ in range(3):  # an activation freed and made again, step after step: freed memory is free again
            activation = torch.ones(60 * MiB // 4)
            del activation
        try:
            torch.ones(100 * MiB // 4)  # 120 + 100 MiB: over the 200 MiB device
        except RuntimeError as exc:
            out["error"] = str(exc)
        out["available"], out["peak"] = memcap.available(), memcap.peak()
        print(json.dumps(out))
    """, cap_mib=200, preload=shim)
    assert seen["mode"] == "cpu_allocator"
    assert 120 * MiB <= seen["held"] < 121 * MiB
    assert "DefaultCPUAllocator: can't allocate memory: you tried to allocate 104857600 bytes" in seen["error"]
    failure = classify(Evidence(returncode=1, record={"exc_type": "RuntimeError", "message": seen["error"]},
                                capped=True))
    assert (failure.kind, failure.memory) == (Kind.CPU_OOM, "device")
    assert 79 * MiB < seen["available"] <= 80 * MiB
    peak, measure = seen["peak"]
    assert measure == "allocated_over_baseline" and 180 * MiB <= peak < 182 * MiB  # 120 + 60, never 120 + 3 x 60


def test_a_full_device_leaves_the_interpreter_its_memory_to_handle_the_oom(tmp_path, shim):
    """Python's own objects are the host's: with the device full, an OOM's handler can still import, classify and
    save. Only a tensor (PyTorch's aligned allocation) is refused."""
    seen = capped(tmp_path, """
        held = torch.ones(190 * MiB // 4)
        host = b"x" * (50 * MiB)  # plain malloc: counted, never refused
        import email.mime.multipart  # a module first imported with the device full
        try:
            torch.ones(MiB // 4)
        except RuntimeError as exc:
            print(json.dumps({"refused": "DefaultCPUAllocator: can't allocate memory" in str(exc)}))
    """, cap_mib=200, preload=shim)
    assert seen == {"refused": True}


def test_a_file_mapped_into_memory_counts_as_loaded_weights_do_on_a_device(tmp_path, shim):
    (tmp_path / "weights.bin").write_bytes(b"\0" * (80 * MiB))
    seen = capped(tmp_path, """
        import mmap
        before = memcap.held()
        with open("weights.bin", "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        during = memcap.held()
        mapped.close()
        print(json.dumps({"grew": during - before, "after": memcap.held() - before}))
    """, cap_mib=200, preload=shim)
    assert 80 * MiB <= seen["grew"] < 81 * MiB and abs(seen["after"]) < MiB


def test_a_forked_dataloader_worker_is_not_held_to_the_device_s_cap(tmp_path, shim):
    seen = capped(tmp_path, """
        pid = os.fork()
        if pid == 0:
            memcap.lift_in_child()  # as worker/hooks/torch_hooks.py does in each DataLoader worker
            torch.ones(300 * MiB // 4)  # host memory, over the 200 MiB device
            os._exit(0)
        print(json.dumps({"child": os.waitpid(pid, 0)[1]}))
    """, cap_mib=200, preload=shim)
    assert seen["child"] == 0


def test_without_the_shim_in_the_process_the_address_space_cap_still_counts_freed_blocks_as_free(tmp_path):
    """A program that drops LD_PRELOAD (a launcher that cleans its environment) gets the address-space cap, with
    process/launch.py's allocator settings made from inside: else glibc keeps freed 20 MiB blocks in its heap, and
    they count against the cap."""
    seen = capped(tmp_path, """
        for _ in range(3):
            block = torch.ones(20 * MiB // 4)
            del block
        print(json.dumps({"mode": memcap.info()["mode"], "held": memcap.held()}))
    """, cap_mib=200)
    assert seen["mode"] == "cpu_address_space" and seen["held"] < 4 * MiB


def test_the_shim_is_built_once_per_machine_and_a_failed_build_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(allocator.Unavailable, match="building it with .*no-such-cc failed"):
        allocator.library()
    assert not list((tmp_path / "cache" / "oomladder").glob("*.so"))
    monkeypatch.delenv("CC")
    try:
        built = allocator.library()
    except allocator.Unavailable as exc:
        pytest.skip(f"no C compiler here: {exc}")
    made = built.stat().st_mtime_ns
    assert allocator.library() == built and built.stat().st_mtime_ns == made
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # no partial file left beside it


def test_the_worker_gets_the_shim_first_in_ld_preload_and_no_address_space_settings(tmp_path):
    attempt = tmp_path / "run" / "attempts" / "001"
    env = worker_env({"LD_PRELOAD": "libtcmalloc.so"}, attempt, Plan(), Plan(), 2**30,
                     allocator_shim=tmp_path / "liboomcap.so")
    assert env["LD_PRELOAD"] == f"{tmp_path / 'liboomcap.so'} libtcmalloc.so"
    assert env["OOMLADDER_CPU_CAP"] == "allocator" and "MALLOC_MMAP_THRESHOLD_" not in env
    plain = worker_env({}, attempt, Plan(), Plan(), 2**30)
    assert "LD_PRELOAD" not in plain and "OOMLADDER_CPU_CAP" not in plain and "MALLOC_MMAP_THRESHOLD_" in plain


def test_by_default_the_shim_is_used_where_the_cap_is_the_cpu_s_and_the_program_preloads_nothing(tmp_path,
                                                                                                   monkeypatch, shim):
    assert allocator.choose("auto", {}) == (shim, None)
    assert allocator.choose("address-space", {}) == (None, None)
    _, why = allocator.choose("auto", {"LD_PRELOAD": "libtcmalloc.so"})  # its malloc would be bypassed
    assert _ is None and "the program preloads libtcmalloc.so" in why and "--cpu-cap allocator" in why
    assert allocator.choose("allocator", {"LD_PRELOAD": "libtcmalloc.so"}) == (shim, None)  # asked for: as asked
    (tmp_path / "nvidiactl").touch()
    monkeypatch.setattr(allocator, "GPU_DEVICE_NODES", (str(tmp_path / "nvidiactl"),))
    assert allocator.choose("auto", {}) == (None, None)  # the cap is a CUDA memory fraction: nothing to preload


def test_a_run_without_a_compiler_warns_once_and_rehearses_on_the_address_space_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    workers, display = ScriptedWorkers(oom_at(2), finish), FakeDisplay()
    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", memory_cap=2**30,
                       ladder=parse_ladder("rungs: [halve_batch]", "t"),
                       initial=Plan(per_device_train_batch_size=16, gradient_accumulation_steps=1))
    assert Runner(config, launcher=workers, clock=count().__next__, sleep=lambda s: None, environ={},
                  display=display).run() == 0
    records = read_journal(tmp_path / "run" / "journal.jsonl")
    started, = (r for r in records if r["type"] == "run_started")
    warned = [r for r in records if r["type"] == "warning" and r.get("about") == "cpu_cap"]
    assert started["cpu_cap"] == "auto" and len(warned) == 1
    assert re.match(r"the CPU cap counts the address space \(1.2-1.6x slower\): the allocator cap cannot be used: "
                    r"building it with \S+no-such-cc failed: ", warned[0]["text"])
    assert sum("the CPU cap counts the address space" in line for line in display.events) == 1
    assert all("LD_PRELOAD" not in s.env and s.env["MALLOC_MMAP_THRESHOLD_"] for s in workers.specs)


def test_by_default_a_capped_worker_gets_the_shim(tmp_path, shim):
    workers = ScriptedWorkers(finish)
    config = RunConfig(command=("python", "train.py"), run_dir=tmp_path / "run", memory_cap=2**30,
                       ladder=parse_ladder("rungs: [halve_batch]", "t"))
    assert Runner(config, launcher=workers, clock=count().__next__, sleep=lambda s: None, environ={}).run() == 0
    env = workers.specs[0].env
    assert env["LD_PRELOAD"] == str(shim) and env["OOMLADDER_CPU_CAP"] == "allocator"


@pytest.mark.parametrize("argv, environ, says", [
    (["--cpu-cap", "malloc"], {}, "--cpu-cap: invalid choice: 'malloc'; did you mean 'allocator'?"),
    ([], {"OOMLADDER_CPU_CAP": "malloc"}, "OOMLADDER_CPU_CAP=malloc is not a way to count the CPU cap: use one of "
                                          "auto, allocator, address-space"),
])
def test_a_wrong_cpu_cap_is_one_line_and_exit_2(tmp_path, argv, environ, says):
    (tmp_path / "t.py").write_text("")
    done = subprocess.run(oomladder_argv("run", *argv, "--run-dir", str(tmp_path / "run"), "--", "python", "t.py"),
                          env={**os.environ, **environ}, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
