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
