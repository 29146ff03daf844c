"""How many threads the parallel kernels use, and whether two threads may launch them at once."""

from __future__ import annotations

import functools
from contextlib import contextmanager

import numba
import numpy as np

from .f16 import count_nonfinite_half


@functools.cache
def concurrent_launches_safe() -> bool:
    """Whether two threads may run parallel kernels at the same time: Numba's OpenMP and TBB
    threading layers allow it; its fallback, workqueue (where neither is installed), aborts the
    process instead. Codecs share a state's tensors between two threads only when it is True."""
    count_nonfinite_half(np.zeros(1, np.uint16))  # Numba picks its layer at the first parallel launch
    return numba.threading_layer() in ("omp", "tbb")


def use_threads(n: int) -> None:
    """How many threads the parallel kernels use when called from this thread (Numba's
    setting is per thread): a background encode takes one and leaves llama.cpp the rest."""
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


@contextmanager
def threads(n: int):
    """use_threads(n) inside the block, and back to what it was after. Right after llama.cpp
    has evaluated, its threads still hold the cores, and a restore decoded on 2 threads ran
    slower than on one (the `turn` suite measures the decode after an eval)."""
    before = numba.get_num_threads()
    use_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(before)
