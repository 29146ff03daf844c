"""Walsh-Hadamard rotation per attention head: spreads outlier channels before quantizing.

The transform is orthonormal and its own inverse, so decoding applies it again.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._flags import inline, parallel_kernel


@inline
def fwht_segment(buf, start, d):
    """In place: buf[start:start+d] (float32, d a power of two) <- H_d @ it / sqrt(d)."""
    h = 1
    while h < d:
        for i in range(start, start + d, 2 * h):
            for j in range(i, i + h):
                a = buf[j]
                b = buf[j + h]
                buf[j] = a + b
                buf[j + h] = a - b
        h *= 2
    norm = np.float32(1.0 / math.sqrt(d))
    for j in range(start, start + d):
        buf[j] *= norm


@parallel_kernel
def _rotate_rows(x, head_dim):
    """x: (n, e) float32, rotated in place, each run of head_dim channels on its own."""
    for i in prange(x.shape[0]):
        row = x[i]
        for start in range(0, x.shape[1], head_dim):
            fwht_segment(row, start, head_dim)


def check_head_dim(n_embd: int, head_dim: int) -> None:
    """Raise ValueError unless head_dim is a power of two that divides n_embd."""
    if head_dim <= 0 or head_dim & (head_dim - 1) or n_embd % head_dim:
        raise ValueError(f"head_dim {head_dim} must be a power of two dividing n_embd {n_embd}")


def hadamard_rows(x: np.ndarray, head_dim: int) -> np.ndarray:
    """x: (n, e) float32 -> a new (n, e) array with every head rotated (orthonormal, self-inverse)."""
    x = np.array(x, dtype=np.float32, order="C", copy=True, ndmin=2)
    check_head_dim(x.shape[1], head_dim)
    _rotate_rows(x, head_dim)
    return x
