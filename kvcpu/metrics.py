"""The one place that measures: process RSS and CPU through psutil, and wall-clock timers."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

_PROC = psutil.Process()


def rss_bytes() -> int:
    """Resident set size of this process."""
    return _PROC.memory_info().rss


def cpu_seconds() -> float:
    """User plus system CPU time this process has used."""
    t = _PROC.cpu_times()
    return t.user + t.system


def cpu_percent() -> float:
    """This process's CPU use since the last call, in percent of one core (psutil)."""
    return _PROC.cpu_percent(interval=None)


@dataclass
class Timing:
    """Filled in when the `timed` block ends."""

    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def ms(self) -> float:
        return self.wall_s * 1e3


@contextmanager
def timed():
    """with timed() as t: ... ; then t.wall_s and t.cpu_s hold what the block cost."""
    t = Timing()
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    try:
        yield t
    finally:
        t.wall_s = time.perf_counter() - wall0
        t.cpu_s = cpu_seconds() - cpu0


def median_of(fn, repeat: int) -> float:
    """Median wall seconds of `repeat` calls of fn(): robust on a shared, noisy machine."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_model() -> str:
    """The CPU's model name, as the OS reports it."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SIMD_FEATURES = ("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni",
                 "avx512bf16", "neon", "sve", "dotprod")


def simd_flags() -> list[str]:
    """The SIMD features LLVM (and so Numba) finds on this CPU."""
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    return [f for f in SIMD_FEATURES if features.get(f)]


def machine() -> dict:
    """The machine a measurement was taken on."""
    import platform

    import llvmlite.binding as llvm

    return {
        "llvm_cpu": llvm.get_host_cpu_name(),
        "simd": simd_flags(),
        "cpu": cpu_model(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
