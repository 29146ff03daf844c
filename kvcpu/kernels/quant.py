"""Group-wise integer quantization of half-precision (or float32) matrices.

A group shares one scale (and, when asymmetric, one minimum), both stored as f16 bits.
Groups run along channels within each token ("rows") or along tokens within each
channel ("cols"). Symmetric: q = rint(x / s) in [-qmax, qmax], s = f16(absmax / qmax).
Asymmetric: q = rint((x - m) / s) in [0, qmax], m = f16(min), s = f16((max - min) / qmax).
Decoding (dequant.py) is x = q * s (+ m). The scale used for rounding is the stored f16 one, so
the error of every value is at most s / 2 before the result is rounded to its output type.
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import overload

from ._flags import inline, parallel_kernel, serial_kernel
from .f16 import float_to_half, half_to_float, nonfinite
from .hadamard import LANES, fwht_tile


def load(v):
    """A stored element as float32 (half bits are converted)."""


@overload(load, inline="always")
def _load_impl(v):
    if v == types.uint16:
        return lambda v: half_to_float(v)
    if isinstance(v, types.Float):
        return lambda v: np.float32(v)
    return None


def store(a, i, j, v):
    """Write float32 v into a[i, j], as half bits when `a` is uint16."""


@overload(store, inline="always")
def _store_impl(a, i, j, v):
    if a.dtype == types.uint16:
        def impl(a, i, j, v):
            # Saturate: a code times a scale rounded up may pass the largest half, 65504.
            a[i, j] = float_to_half(min(max(v, np.float32(-65504.0)), np.float32(65504.0)))
        return impl

    def impl_float(a, i, j, v):
        a[i, j] = v
    return impl_float


@inline
def _params(lo_val, hi_val, qmax, symmetric):
    """(scale, zero) as float32 values of their stored f16, and their f16 bits."""
    if symmetric:
        amax = max(abs(lo_val), abs(hi_val))
        sbits = float_to_half(np.float32(amax / qmax))
        zbits = np.uint16(0)
    else:
        sbits = float_to_half(np.float32((hi_val - lo_val) / qmax))
        zbits = float_to_half(np.float32(lo_val))
    return half_to_float(sbits), half_to_float(zbits), sbits, zbits


@inline
def _inverse(s):
    return np.float32(1.0) / s if s > 0 else np.float32(0.0)


@inline
def _code(x, inv, z, lo, qmax):
    """The code of x: rint((x - z) * inv), clipped to [lo, qmax]."""
    return np.int8(min(max(np.rint((x - z) * inv), np.float32(lo)), np.float32(qmax)))


# Per-token kernels work on tiles of LANES tokens: (e, LANES) float32, channel-major, so that
# every loop runs across tokens in its innermost dimension and vectorizes (per-group loops of
# 32 channels along a row did not), Hadamard stages included.


@parallel_kernel
def _quantize_rows(src, group, qmax, symmetric, head_dim, q, scale, zero):
    """src: (n, e) uint16 or float32. Groups of `group` channels per token.

    head_dim > 0 first rotates each head. q: (n, e) int8; scale, zero: (n, ceil(e/group)) uint16.
    """
    n, e = src.shape
    n_groups = (e + group - 1) // group
    lo_code = -qmax if symmetric else 0
    for c in prange((n + LANES - 1) // LANES):
        r0 = c * LANES
        m = min(LANES, n - r0)
        t = np.empty((e, LANES), np.float32)
        qt = np.empty((e, LANES), np.int8)
        for i in range(m):
            for j in range(e):
                t[j, i] = load(src[r0 + i, j])
        if head_dim > 0:
            for start in range(0, e, head_dim):
                fwht_tile(t, start, head_dim, m)
        mn = np.empty(LANES, np.float32)
        mx = np.empty(LANES, np.float32)
        inv = np.empty(LANES, np.float32)
        zz = np.empty(LANES, np.float32)
        for g in range(n_groups):
            lo = g * group
            hi = min(lo + group, e)
            for i in range(m):
                mn[i] = t[lo, i]
                mx[i] = t[lo, i]
            for j in range(lo + 1, hi):
                for i in range(m):
                    mn[i] = min(mn[i], t[j, i])
                    mx[i] = max(mx[i], t[j, i])
            for i in range(m):
                s, z, scale[r0 + i, g], zero[r0 + i, g] = _params(mn[i], mx[i], qmax, symmetric)
                inv[i] = _inverse(s)
                zz[i] = z
            for j in range(lo, hi):
                for i in range(m):
                    qt[j, i] = _code(t[j, i], inv[i], zz[i], lo_code, qmax)
        for i in range(m):
            for j in range(e):
                q[r0 + i, j] = qt[j, i]


# Groups whose ranges, then scales, then codes _quantize_flat computes in turn: each pass
# vectorizes on its own (the scales across groups), and a chunk's values stay in L1 between.
_CHUNK = 64


@serial_kernel
def _quantize_flat(src, group, qmax, symmetric, q, scale, zero):
    """Per-token groups that tile every row (e % group == 0), seen flat: src (n*e,) uint16 or
    float32; q (n*e,) int8; scale, zero (n*e/group,) uint16. _quantize_rows' results without its
    tiles (which rotation needs): each group is contiguous. Returns how many groups hold inf or
    NaN, found from the groups' ranges (a separate scan cost a tenth of the encode).

    Three things made it 2.5x faster than one pass per group (a K of 2,000 tokens, isolated:
    about 200 -> 85 us, bit for bit the same): chunks of groups, so the per-group scale
    arithmetic runs across groups in vector lanes; chunks counted by range(n) rather than
    range(0, n, step), with which Numba's loop kept every inner loop scalar; and a range width
    LLVM cannot see is 32, since a constant trip count got that loop unrolled and left scalar
    (3x slower), while the code loop wants the constant (it is then vectorized whole).
    """
    n_groups = scale.shape[0]
    width = src.shape[0] // n_groups  # == group
    lo_code = -qmax if symmetric else 0
    lo = np.empty(_CHUNK, np.float32)
    hi = np.empty(_CHUNK, np.float32)
    inv = np.empty(_CHUNK, np.float32)
    zf = np.empty(_CHUNK, np.float32)
    bad = 0
    for c in range((n_groups + _CHUNK - 1) // _CHUNK):
        c0 = c * _CHUNK
        m = min(_CHUNK, n_groups - c0)
        for g in range(m):
            lo[g], hi[g] = group_range(src, (c0 + g) * width, width, symmetric)
        for g in range(m):
            s, zf[g], scale[c0 + g], zero[c0 + g] = _params(lo[g], hi[g], qmax, symmetric)
            inv[g] = _inverse(s)
        if group == 32:
            for g in range(m):
                _group_codes(src, (c0 + g) * 32, 32, inv[g], zf[g], lo_code, qmax, q)
        else:
            for g in range(m):
                _group_codes(src, (c0 + g) * group, group, inv[g], zf[g], lo_code, qmax, q)
        for g in range(m):
            bad += 0 if np.isfinite(lo[g]) and np.isfinite(hi[g]) else 1
    return bad


@serial_kernel
def _quantize_channel_major(src_t, group, qmax, symmetric, q_t, scale, zero):
    """Per-token groups of a matrix given channel-major (a V cache as llama.cpp stores it):
    src_t (e, n) uint16 or float32, e % group == 0; q_t (e, >= n) int8 codes, channel-major;
    scale, zero (n, e/group) uint16. _quantize_rows' results without transposing the input:
    every loop runs along tokens, so ranges, scales and codes all vectorize. Returns nonzero
    when a value is inf or NaN."""
    e, n = src_t.shape
    lo_code = -qmax if symmetric else 0
    mn = np.empty(n, np.float32)
    mx = np.empty(n, np.float32)
    inv = np.empty(n, np.float32)
    zf = np.empty(n, np.float32)
    bad = np.uint32(0)  # nonzero once a value is inf or NaN (an integer max, which vectorizes)
    for g in range(e // group):
        j0 = g * group
        for i in range(n):
            mn[i] = load(src_t[j0, i])
            mx[i] = mn[i]
            bad = max(bad, nonfinite(src_t[j0, i]))
        for j in range(j0 + 1, j0 + group):
            row = src_t[j]
            for i in range(n):
                v = load(row[i])
                mn[i] = min(mn[i], v)
                mx[i] = max(mx[i], v)
                bad = max(bad, nonfinite(row[i]))
        for i in range(n):
            s, zf[i], scale[i, g], zero[i, g] = _params(mn[i], mx[i], qmax, symmetric)
            inv[i] = _inverse(s)
        for j in range(j0, j0 + group):
            row = src_t[j]
            codes = q_t[j]
            for i in range(n):
                codes[i] = _code(load(row[i]), inv[i], zf[i], lo_code, qmax)
    return bad


@inline
def _group_codes(src, base, size, inv, z, lo_code, qmax, q):
    for j in range(size):
        q[base + j] = _code(load(src[base + j]), inv, z, lo_code, qmax)


def group_range(src, base, size, symmetric):
    """(min, max) of src[base:base + size] as float32; when symmetric, (0, largest magnitude).
    Not both finite when the group holds inf or NaN."""


@overload(group_range, inline="always")
def _group_range_impl(src, base, size, symmetric):
    if src.dtype == types.uint16:
        # Half bits compared as integers: magnitudes are the low 15 bits, and flipping bits maps
        # signed halves onto unsigned keys in the same order. Integer min and max loops
        # vectorize (given a trip count LLVM cannot see as a constant: _quantize_flat); float
        # ones do not without fastmath, which stays off (K's encode, profiled: the per-group
        # float reduction was most of it).
        def impl(src, base, size, symmetric):
            if symmetric:
                top = np.uint32(0)
                for j in range(size):
                    top = max(top, np.uint32(src[base + j]) & np.uint32(0x7FFF))
                return np.float32(0.0), half_to_float(np.uint16(top))
            lo, hi = np.uint32(0xFFFF), np.uint32(0)
            for j in range(size):
                b = np.uint32(src[base + j])
                key = b ^ ((b >> np.uint32(15)) * np.uint32(0x7FFF)) ^ np.uint32(0x8000)
                lo = min(lo, key)
                hi = max(hi, key)
            return half_to_float(_key_to_half(lo)), half_to_float(_key_to_half(hi))
        return impl

    def impl_float(src, base, size, symmetric):
        mn = load(src[base])
        mx = mn
        n_nan = np.uint32(mn != mn)
        for j in range(1, size):
            v = load(src[base + j])
            mn = min(mn, v)
            mx = max(mx, v)
            n_nan += np.uint32(v != v)
        if n_nan:  # min and max alone may pass over a NaN
            mn = np.float32(np.nan)
        return mn, mx
    return impl_float


@inline
def _key_to_half(key):
    """The half bits of an order key (see group_range)."""
    return np.uint16(key ^ np.uint32(0x8000) ^ ((np.uint32(1) - (key >> np.uint32(15))) * np.uint32(0x7FFF)))


@parallel_kernel
def _quantize_cols(src, group, qmax, symmetric, q, scale, zero):
    """src: (n, e) uint16 or float32. Groups of `group` tokens per channel.

    q: (n, e) int8; scale, zero: (ceil(n/group), e) uint16.
    """
    n, e = src.shape
    n_groups = (n + group - 1) // group
    for g in prange(n_groups):
        lo = g * group
        hi = min(lo + group, n)
        block = np.empty((hi - lo, e), np.float32)
        for i in range(lo, hi):
            for j in range(e):
                block[i - lo, j] = load(src[i, j])
        mn = block[0].copy()
        mx = block[0].copy()
        for r in range(1, hi - lo):
            for j in range(e):
                mn[j] = min(mn[j], block[r, j])
                mx[j] = max(mx[j], block[r, j])
        s = np.empty(e, np.float32)
        z = np.empty(e, np.float32)
        for j in range(e):
            s[j], z[j], scale[g, j], zero[g, j] = _params(mn[j], mx[j], qmax, symmetric)
        inv = np.empty(e, np.float32)
        for j in range(e):
            inv[j] = _inverse(s[j])
        lo_code = -qmax if symmetric else 0
        for r in range(hi - lo):
            for j in range(e):
                q[lo + r, j] = _code(block[r, j], inv[j], z[j], lo_code, qmax)
