"""Run a Python script under the same CPU memory cap oomladder applies, without oomladder: the
baselines of the benchmark (a direct run, Hugging Face's auto_find_batch_size) meet the same
emulated device.

    python -m benchmarks.capped 1200MiB script.py args...
"""

import os
import runpy
import sys

from oomladder.units import parse_size


def main() -> None:
    cap, script, *args = sys.argv[1:]
    os.environ["OOMLADDER_MEMORY_CAP"] = str(parse_size(cap))
    import transformers  # noqa: F401  (the frameworks are imported before the limit, as under oomladder)

    from oomladder.worker.hooks import memcap
    memcap.arm()
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
