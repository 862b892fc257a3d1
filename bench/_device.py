"""The processor name benchmarks record next to their numbers (one place instead of one copy per script).

Benchmarks run as `python bench/bench_<x>.py`, so this folder is on sys.path and `from _device import cpu_name` works.
"""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
