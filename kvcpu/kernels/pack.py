"""Bit packing of small codes: 8 // bits codes per byte, the first code in the lowest bits."""

from __future__ import annotations

import numpy as np
from numba import prange

from ._flags import parallel_kernel


@parallel_kernel
def _pack_codes(q, bits, offset, out):
    """q: (n, e) int8 codes; offset shifts them into [0, 2**bits). out: (n, ceil(e * bits / 8)) uint8."""
    n, e = q.shape
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    full = e // per_byte  # bytes whose codes are all present: a branch-free loop each width
    for i in prange(n):
        if bits == 4:
            for k in range(full):
                out[i, k] = np.uint8(((q[i, 2 * k] + offset) & 15) | (((q[i, 2 * k + 1] + offset) & 15) << 4))
        elif bits == 2:
            for k in range(full):
                j = 4 * k
                out[i, k] = np.uint8(((q[i, j] + offset) & 3) | (((q[i, j + 1] + offset) & 3) << 2)
                                     | (((q[i, j + 2] + offset) & 3) << 4) | (((q[i, j + 3] + offset) & 3) << 6))
        else:
            for k in range(full):
                b = 0
                for s in range(per_byte):
                    b |= ((q[i, k * per_byte + s] + offset) & mask) << (s * bits)
                out[i, k] = np.uint8(b)
        if full < out.shape[1]:
            b = 0
            for s in range(e - full * per_byte):
                b |= ((q[i, full * per_byte + s] + offset) & mask) << (s * bits)
            out[i, full] = np.uint8(b)


@parallel_kernel
def _unpack_codes(packed, bits, offset, q):
    """packed: (n, ceil(e * bits / 8)) uint8 -> q: (n, e) int8 codes, offset subtracted."""
    n, e = q.shape
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    full = e // per_byte
    for i in prange(n):
        if bits == 4:
            for k in range(full):
                b = np.int32(packed[i, k])
                q[i, 2 * k] = np.int8((b & 15) - offset)
                q[i, 2 * k + 1] = np.int8((b >> 4) - offset)
        elif bits == 2:
            for k in range(full):
                b = np.int32(packed[i, k])
                q[i, 4 * k] = np.int8((b & 3) - offset)
                q[i, 4 * k + 1] = np.int8(((b >> 2) & 3) - offset)
                q[i, 4 * k + 2] = np.int8(((b >> 4) & 3) - offset)
                q[i, 4 * k + 3] = np.int8((b >> 6) - offset)
        else:
            for k in range(full):
                b = np.int32(packed[i, k])
                for s in range(per_byte):
                    q[i, k * per_byte + s] = np.int8(((b >> (s * bits)) & mask) - offset)
        if full < packed.shape[1]:
            b = np.int32(packed[i, full])
            for s in range(e - full * per_byte):
                q[i, full * per_byte + s] = np.int8(((b >> (s * bits)) & mask) - offset)


# -- public entry points: validate, allocate, call the kernels above --

PACKABLE_BITS = (1, 2, 4)


def packed_width(n_cols: int, bits: int) -> int:
    """Bytes per row of n_cols codes of `bits` bits."""
    return -(-n_cols * bits // 8)


def pack_codes(q: np.ndarray, bits: int, offset: int) -> np.ndarray:
    """q: (n, e) int8 codes in [-offset, 2**bits - offset) -> (n, packed_width(e, bits)) uint8."""
    if bits not in PACKABLE_BITS:
        raise ValueError(f"bits must be one of {PACKABLE_BITS}, not {bits}")
    q = np.ascontiguousarray(q, dtype=np.int8)
    if q.ndim != 2:
        raise ValueError(f"expected (n, e) codes, got shape {q.shape}")
    out = np.empty((q.shape[0], packed_width(q.shape[1], bits)), dtype=np.uint8)
    if q.size:
        _pack_codes(q, bits, offset, out)
    return out


def unpack_codes(packed: np.ndarray, n_cols: int, bits: int, offset: int) -> np.ndarray:
    """packed: (n, packed_width(n_cols, bits)) uint8 -> (n, n_cols) int8 codes."""
    if bits not in PACKABLE_BITS:
        raise ValueError(f"bits must be one of {PACKABLE_BITS}, not {bits}")
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] != packed_width(n_cols, bits):
        raise ValueError(f"packed shape {packed.shape} does not hold {n_cols} columns of {bits} bits")
    q = np.empty((packed.shape[0], n_cols), dtype=np.int8)
    if q.size:
        _unpack_codes(packed, bits, offset, q)
    return q


def pack_nibbles(q: np.ndarray, offset: int) -> np.ndarray:
    """Two 4-bit codes per byte: pack_codes(q, 4, offset)."""
    return pack_codes(q, 4, offset)


def unpack_nibbles(packed: np.ndarray, n_cols: int, offset: int) -> np.ndarray:
    return unpack_codes(packed, n_cols, 4, offset)
