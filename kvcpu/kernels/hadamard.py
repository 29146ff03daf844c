"""Walsh-Hadamard rotation per attention head: spreads outlier channels before quantizing.

The transform is orthonormal and its own inverse, so decoding applies it again.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._flags import inline, parallel_kernel

LANES = 32  # tokens per tile: rows are rotated 32 at a time, across the tile's lanes


@inline
def fwht_tile(t, start, d, m):
    """Rotate channels start..start+d of the first m lanes (tokens) of tile t (e, LANES), in
    place. The lanes are innermost, so every butterfly stage vectorizes across tokens."""
    h = 1
    while h < d:
        for base in range(start, start + d, 2 * h):
            for j in range(base, base + h):
                for i in range(m):
                    a = t[j, i]
                    b = t[j + h, i]
                    t[j, i] = a + b
                    t[j + h, i] = a - b
        h *= 2
    norm = np.float32(1.0 / math.sqrt(d))
    for j in range(start, start + d):
        for i in range(m):
            t[j, i] *= norm


@parallel_kernel
def _rotate_rows(x, head_dim):
    """x: (n, e) float32, every head of head_dim channels rotated in place."""
    n, e = x.shape
    for c in prange((n + LANES - 1) // LANES):
        r0 = c * LANES
        m = min(LANES, n - r0)
        t = np.empty((e, LANES), np.float32)
        for i in range(m):
            for j in range(e):
                t[j, i] = x[r0 + i, j]
        for start in range(0, e, head_dim):
            fwht_tile(t, start, head_dim, m)
        for i in range(m):
            for j in range(e):
                x[r0 + i, j] = t[j, i]


def rotation_size(head_dim: int) -> int:
    """The widest Walsh-Hadamard rotation that stays inside heads of head_dim channels: the
    largest power of two dividing it (64 for 64, 16 for 80, 32 for 96, 256 for 256)."""
    if head_dim <= 0:
        raise ValueError(f"head_dim must be positive, not {head_dim}")
    return head_dim & -head_dim


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
