"""Group-wise dequantization, the inverse of quant.py's kernels: x = q * s (+ m), into half bits
or float32, in the orientation the caller's buffer has."""

from __future__ import annotations

import numpy as np
from numba import prange

from ._flags import parallel_kernel, serial_kernel
from .f16 import float_to_half, half_to_float
from .hadamard import LANES, fwht_tile
from .quant import store


@parallel_kernel
def _dequantize_rows(q, scale, zero, group, head_dim, dst, dst_transposed):
    """Inverse of _quantize_rows. dst: (n, e) uint16 (half bits) or float32; (e, n) when
    dst_transposed, which the channel-major tile writes without a separate transpose."""
    n, e = q.shape
    n_groups = (e + group - 1) // group
    for c in prange((n + LANES - 1) // LANES):
        r0 = c * LANES
        m = min(LANES, n - r0)
        t = np.empty((e, LANES), np.float32)
        s = np.empty(LANES, np.float32)
        z = np.empty(LANES, np.float32)
        for g in range(n_groups):
            for i in range(m):
                s[i] = half_to_float(scale[r0 + i, g])
                z[i] = half_to_float(zero[r0 + i, g])
            for j in range(g * group, min(g * group + group, e)):
                for i in range(m):
                    t[j, i] = np.float32(q[r0 + i, j]) * s[i] + z[i]
        if head_dim > 0:
            for start in range(0, e, head_dim):
                fwht_tile(t, start, head_dim, m)
        out = np.empty((e, LANES), dst.dtype)  # convert across lanes (vectorizes), then transpose
        for j in range(e):
            for i in range(m):
                store(out, j, i, t[j, i])
        if dst_transposed:
            for j in range(e):
                for i in range(m):
                    dst[j, r0 + i] = out[j, i]
        else:
            for i in range(m):
                for j in range(e):
                    dst[r0 + i, j] = out[j, i]


@serial_kernel
def _dequantize_flat_half(q, scale, zero, group, symmetric, dst):
    """Per-token groups that tile every row (e % group == 0), seen flat, into half bits: q
    and dst (n*e,), scale and zero (n*e/group,). The restore path's kernel for token-major
    tensors. It writes float_to_half inline (through `store` it ran 8x slower), and groups of
    32 get a loop of constant trip count, which LLVM unrolls and vectorizes (4x faster than a
    loop of `group` iterations, measured while writing it; the `turn` and `kernels` suites
    measure the decode it serves)."""
    n_groups = scale.shape[0]
    lo, hi = np.float32(-65504.0), np.float32(65504.0)  # saturate, as `store` does
    if group == 32 and symmetric:
        for g in range(n_groups):
            s = half_to_float(scale[g])
            base = g * 32
            for j in range(32):
                dst[base + j] = float_to_half(min(max(np.float32(q[base + j]) * s, lo), hi))
    else:
        for g in range(n_groups):
            s = half_to_float(scale[g])
            z = np.float32(0.0) if symmetric else half_to_float(zero[g])
            base = g * group
            for j in range(group):
                dst[base + j] = float_to_half(min(max(np.float32(q[base + j]) * s + z, lo), hi))


@serial_kernel
def _dequantize_codes_transposed_half(q_t, scale, zero, group, symmetric, dst, row_stride):
    """Per-token groups whose codes were transposed (transpose_bytes), into half bits
    channel-major: q_t (e, >= n) int8; scale, zero (n, e/group) half bits; dst flat, row j of
    the (e, n) result starting at j * row_stride (a wider state's rows, when a shared prefix
    joins in place; a 2-d view of them ran 3x slower, its stride unknown to the vectorizer).
    The restore path's kernel for a V cache stored transposed: every loop runs along tokens,
    reading and writing contiguously."""
    e = q_t.shape[0]
    n = scale.shape[0]
    n_groups = scale.shape[1]
    lo, hi = np.float32(-65504.0), np.float32(65504.0)  # saturate, as `store` does
    s = np.empty((n_groups, n), np.float32)
    z = np.zeros((n_groups, n), np.float32)
    for i in range(n):
        for g in range(n_groups):
            s[g, i] = half_to_float(scale[i, g])
            if not symmetric:
                z[g, i] = half_to_float(zero[i, g])
    for j in range(e):
        g = j // group
        # A slice, indexed from 0: dst[j * row_stride + i] made Numba check for negative indices,
        # and the loop ran 3x slower, unvectorized.
        row = dst[j * row_stride : j * row_stride + n]
        if symmetric:
            for i in range(n):
                row[i] = float_to_half(min(max(np.float32(q_t[j, i]) * s[g, i], lo), hi))
        else:
            for i in range(n):
                row[i] = float_to_half(min(max(np.float32(q_t[j, i]) * s[g, i] + z[g, i], lo), hi))


@parallel_kernel
def _dequantize_cols(q, scale, zero, group, dst):
    """Inverse of _quantize_cols. dst: (n, e) uint16 (half bits) or float32."""
    n, e = q.shape
    n_groups = (n + group - 1) // group
    for g in prange(n_groups):
        s = np.empty(e, np.float32)
        z = np.empty(e, np.float32)
        for j in range(e):
            s[j] = half_to_float(scale[g, j])
            z[j] = half_to_float(zero[g, j])
        for i in range(g * group, min(g * group + group, n)):
            for j in range(e):
                store(dst, i, j, np.float32(q[i, j]) * s[j] + z[j])
