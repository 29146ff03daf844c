"""Independent jobs (a state's tensors) shared between the calling thread and one helper thread.

A state's 60 or so K and V tensors encode and decode independently, through serial Numba
kernels that release the GIL. Two Python threads pulling jobs from one counter use both
cores without Numba's parallel pool: that pool's cached code ran 5x slower (numba#8085),
and right after an eval it waits on cores llama.cpp's threads still hold. Measured on a
2,000-token SmolLM2 state right after an eval, int8 encode: 19.4 ms on one thread,
12.9 ms on two (the `turn` suite's after-eval figures).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# Two at most: the work is memory-bound, and a third thread on a 2-core box only queues.
WORKERS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _helpers() -> ThreadPoolExecutor:
    """Helpers at the calling thread's own priority: the background store's thread runs niced
    (background.STORE_NICE), so that llama.cpp's prefill goes first, and its helper must too."""
    nice = _own_nice()
    with _pools_lock:
        pool = _pools.get(nice)
        if pool is None:
            # Threads start from the thread that submits, and inherit its priority.
            pool = _pools[nice] = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"kvcpu-tensors-nice{nice}")
        return pool


def _own_nice() -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except (AttributeError, OSError):  # no per-thread priority here: one pool
        return 0


def run_jobs(jobs: Sequence[Callable[[], T]], split: bool = True) -> list[T]:
    """Every job's result, in order. With split (and two cores), this thread and a helper take
    jobs from one counter until none are left; the first error stops both and is raised."""
    if not split or WORKERS < 2 or len(jobs) < 2:
        return [job() for job in jobs]
    results: list = [None] * len(jobs)
    counter = itertools.count()
    failed = threading.Event()

    def drain() -> None:
        while not failed.is_set():
            i = next(counter)  # atomic under the GIL: each job is taken once
            if i >= len(jobs):
                return
            try:
                results[i] = jobs[i]()
            except BaseException:
                failed.set()
                raise

    try:
        helper = _helpers().submit(drain)
    except RuntimeError:  # the interpreter is exiting: its executors take no new work
        return [job() for job in jobs]
    try:
        drain()
    finally:
        # A helper busy elsewhere that never started is not waited for; one that did start is.
        error = None if helper.cancel() else helper.exception()
    if error is not None:
        raise error
    return results
