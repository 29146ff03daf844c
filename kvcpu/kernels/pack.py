"""Nibble packing: two 4-bit codes per byte, the even column in the low nibble."""

from __future__ import annotations

import numpy as np
from numba import prange

from ._flags import parallel_kernel


@parallel_kernel
def _pack_nibbles(q, offset, out):
    """q: (n, e) int8 codes; offset shifts them into [0, 15]. out: (n, ceil(e/2)) uint8."""
    n, e = q.shape
    for i in prange(n):
        for k in range(e // 2):
            lo = np.uint8(q[i, 2 * k] + offset)
            hi = np.uint8(q[i, 2 * k + 1] + offset)
            out[i, k] = (lo & np.uint8(0x0F)) | np.uint8(hi << np.uint8(4))
        if e % 2:
            out[i, e // 2] = np.uint8(q[i, e - 1] + offset) & np.uint8(0x0F)


@parallel_kernel
def _unpack_nibbles(packed, offset, q):
    """packed: (n, ceil(e/2)) uint8 -> q: (n, e) int8 codes, offset subtracted."""
    n, e = q.shape
    for i in prange(n):
        for k in range(e // 2):
            b = packed[i, k]
            q[i, 2 * k] = np.int8(np.int16(b & np.uint8(0x0F)) - offset)
            q[i, 2 * k + 1] = np.int8(np.int16(b >> np.uint8(4)) - offset)
        if e % 2:
            q[i, e - 1] = np.int8(np.int16(packed[i, e // 2] & np.uint8(0x0F)) - offset)
