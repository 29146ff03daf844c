"""Uniform quantization with a step per channel and per token-head: the codes of `ecq`.

x ~ offset[c] + q[t, c] * (row_step[t, c // head] * col_step[c]), q an int8 in [-127, 127].
The caller chooses steps large enough that no code is clipped; the kernel clips anyway, so
that a step too small can only cost accuracy, never wrap a code around.
"""

from __future__ import annotations

import numpy as np

from ._flags import serial_kernel
from .f16 import float_to_half
from .quant import load, store


@serial_kernel
def _quantize_stepped(src, offset, row_step, col_step, head, q):
    """src: (n, e) half bits or float32; offset, col_step: (e,); row_step: (n, e // head); q: (n, e) int8."""
    n, e = src.shape
    for t in range(n):
        for h in range(e // head):
            rs = row_step[t, h]
            for c in range(h * head, (h + 1) * head):  # a head's channels share rs: this loop vectorizes
                code = np.rint((load(src[t, c]) - offset[c]) / (rs * col_step[c]))
                q[t, c] = np.int8(min(max(code, np.float32(-127.0)), np.float32(127.0)))


@serial_kernel
def _dequantize_stepped(q, offset, row_step, col_step, head, dst):
    """q: (n, e) int8 -> dst: (n, e) half bits or float32 (dst may have more rows than q)."""
    n, e = q.shape
    for t in range(n):
        for h in range(e // head):
            rs = row_step[t, h]
            for c in range(h * head, (h + 1) * head):
                store(dst, t, c, np.float32(q[t, c]) * (rs * col_step[c]) + offset[c])


@serial_kernel
def _dequantize_stepped_half(q, offset, row_step, col_step, head, dst):
    """_dequantize_stepped into half bits, flat: q (n*e,) int8, dst (>= n*e,) uint16. It writes
    float_to_half inline and indexes 1-d arrays, so that a head's loop vectorizes: 4x faster
    than through `store` on 2-d arrays (a restore of 1,000 tokens, profiled)."""
    n, heads = row_step.shape
    e = heads * head
    lo, hi = np.float32(-65504.0), np.float32(65504.0)  # saturate, as `store` does
    for t in range(n):
        for h in range(heads):
            rs = row_step[t, h]
            base, c0 = t * e + h * head, h * head
            for j in range(head):
                v = np.float32(q[base + j]) * (rs * col_step[c0 + j]) + offset[c0 + j]
                dst[base + j] = float_to_half(min(max(v, lo), hi))


@serial_kernel
def _undo_token_deltas(deltas, codes):
    """deltas: (e, n) int8, per channel each code minus the previous token's (wrapping) ->
    codes: (n, e) int8. Tokens outer, channels inner: the running sums advance together."""
    e, n = deltas.shape
    acc = np.zeros(e, np.int8)
    for t in range(n):
        for c in range(e):
            acc[c] = np.int8(acc[c] + deltas[c, t])
            codes[t, c] = acc[c]
