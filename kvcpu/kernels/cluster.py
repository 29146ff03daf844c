"""Token-merging kernels: how alike neighbouring tokens are, and the mean of runs of tokens."""

from __future__ import annotations

import numpy as np
from numba import prange

from ._flags import parallel_kernel
from .f16 import float_to_half, half_to_float


@parallel_kernel
def _cosine_to_previous(x, out):
    """x: (n, e) uint16 half bits; out[i] += cos(x[i], x[i-1]) for i >= 1."""
    n, e = x.shape
    for i in prange(1, n):
        dot = 0.0
        a2 = 0.0
        b2 = 0.0
        for j in range(e):
            a = np.float64(half_to_float(x[i, j]))
            b = np.float64(half_to_float(x[i - 1, j]))
            dot += a * b
            a2 += a * a
            b2 += b * b
        if a2 > 0 and b2 > 0:
            out[i] += dot / np.sqrt(a2 * b2)
        elif a2 == 0 and b2 == 0:
            out[i] += 1.0


@parallel_kernel
def _mean_of_runs(x, starts, out):
    """x: (n, e) uint16 half bits; starts: (m + 1,) run boundaries; out: (m, e) uint16, run means."""
    m = len(starts) - 1
    e = x.shape[1]
    for r in prange(m):
        lo = starts[r]
        hi = starts[r + 1]
        for j in range(e):
            acc = np.float32(0.0)
            for i in range(lo, hi):
                acc += half_to_float(x[i, j])
            out[r, j] = float_to_half(acc / np.float32(hi - lo))


def cosine_to_previous(matrices: list[np.ndarray]) -> np.ndarray:
    """matrices: (n, e) uint16 half-bit arrays over the same n tokens -> (n,) mean cosine of each
    token with the one before it, across all matrices (entry 0 is 1)."""
    n = matrices[0].shape[0]
    acc = np.zeros(n, dtype=np.float64)
    for m in matrices:
        if m.shape[0] != n or m.dtype != np.uint16:
            raise ValueError("every matrix must be (n, e) uint16 over the same tokens")
        _cosine_to_previous(np.ascontiguousarray(m), acc)
    acc /= len(matrices)
    acc[0] = 1.0
    return acc


def mean_of_runs(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """x: (n, e) uint16 half bits; starts: increasing run boundaries from 0 to n -> (m, e) run means."""
    starts = np.asarray(starts, dtype=np.int64)
    if x.dtype != np.uint16 or x.ndim != 2:
        raise ValueError("x must be (n, e) uint16 half bits")
    if len(starts) < 1 or starts[0] != 0 or starts[-1] != x.shape[0] or np.any(np.diff(starts) <= 0):
        raise ValueError("starts must rise strictly from 0 to n")
    out = np.empty((len(starts) - 1, x.shape[1]), dtype=np.uint16)
    _mean_of_runs(np.ascontiguousarray(x), starts, out)
    return out
