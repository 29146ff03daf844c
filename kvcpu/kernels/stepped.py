"""Uniform quantization with a step per channel and per token-head: the codes of `ecq`.

x ~ offset[c] + q[t, c] * (row_step[t, c // head] * col_step[c]), q an int8 in [-127, 127].
The caller chooses steps large enough that no code is clipped; the kernel clips anyway, so
that a step too small can only cost accuracy, never wrap a code around.
"""

from __future__ import annotations

import numpy as np

from ._flags import serial_kernel
from .quant import load, store


@serial_kernel
def _quantize_stepped(src, offset, row_step, col_step, head, q):
    """src: (n, e) half bits or float32; offset, col_step: (e,); row_step: (n, e // head); q: (n, e) int8."""
    n, e = src.shape
    for t in range(n):
        for c in range(e):
            step = row_step[t, c // head] * col_step[c]
            code = np.rint((load(src[t, c]) - offset[c]) / step)
            q[t, c] = np.int8(min(max(code, np.float32(-127.0)), np.float32(127.0)))


@serial_kernel
def _dequantize_stepped(q, offset, row_step, col_step, head, dst):
    """q: (n, e) int8 -> dst: (n, e) half bits or float32 (dst may have more rows than q)."""
    n, e = q.shape
    for t in range(n):
        for c in range(e):
            step = row_step[t, c // head] * col_step[c]
            store(dst, t, c, np.float32(q[t, c]) * step + offset[c])
