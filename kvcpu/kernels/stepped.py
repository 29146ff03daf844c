"""Uniform quantization with a step per channel and per token-head: the codes of `ecq`.

x ~ offset[c] + q[t, c] * (row_step[t, c // head] * col_step[c]), q an int8 in [-127, 127].
The caller chooses steps large enough that no code is clipped; the kernel clips anyway, so
that a step too small can only cost accuracy, never wrap a code around.
"""

from __future__ import annotations

import numpy as np

from ._flags import serial_kernel
from .f16 import float_to_half
from .groups import _matrix
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


# -- public entry points: validate, allocate, call the kernels above --

def _stepped_args(shape, offset, row_step, col_step) -> tuple:
    """The step arrays as float32, checked against an (n, e) matrix; and the head size they imply."""
    n, e = shape
    offset, col_step, row_step = (np.ascontiguousarray(a, dtype=np.float32) for a in (offset, col_step, row_step))
    if offset.shape != (e,) or col_step.shape != (e,):
        raise ValueError(f"offset and col_step must have shape ({e},), not {offset.shape} and {col_step.shape}")
    if row_step.ndim != 2 or row_step.shape[0] != n or row_step.shape[1] < 1 or e % row_step.shape[1]:
        raise ValueError(f"row_step must be (n={n}, heads) with heads dividing {e}, not {row_step.shape}")
    for name, a in (("row_step", row_step), ("col_step", col_step)):
        if a.size and not (np.all(np.isfinite(a)) and np.all(a > 0)):
            raise ValueError(f"{name} must be positive and finite")
    return offset, row_step, col_step, e // row_step.shape[1] if e else 1


def quantize_stepped(x: np.ndarray, offset: np.ndarray, row_step: np.ndarray, col_step: np.ndarray) -> np.ndarray:
    """x: (n, e) half bits or float32 -> (n, e) int8 codes rint((x - offset[c]) / step[t, c]),
    clipped to [-127, 127], where step[t, c] = row_step[t, c // head] * col_step[c];
    offset, col_step: (e,); row_step: (n, e // head)."""
    x = _matrix(x)
    offset, row_step, col_step, head = _stepped_args(x.shape, offset, row_step, col_step)
    q = np.empty(x.shape, np.int8)
    if x.size:
        _quantize_stepped(x, offset, row_step, col_step, head, q)
    return q


def dequantize_stepped(q: np.ndarray, offset: np.ndarray, row_step: np.ndarray, col_step: np.ndarray,
                       out_dtype=np.uint16, out: np.ndarray | None = None) -> np.ndarray:
    """quantize_stepped's inverse: q (n, e) int8 -> (n, e) half bits or float32, into `out`'s first
    n rows when given (a C-contiguous (m >= n, e) array of out_dtype)."""
    q = np.asarray(q)
    if q.ndim != 2 or q.dtype != np.int8:
        raise ValueError(f"codes must be an (n, e) int8 matrix, not {q.dtype} {q.shape}")
    out_dtype = np.dtype(out_dtype)
    if out_dtype not in (np.uint16, np.float32):
        raise TypeError(f"out_dtype must be uint16 (half bits) or float32, not {out_dtype}")
    offset, row_step, col_step, head = _stepped_args(q.shape, offset, row_step, col_step)
    if out is None:
        out = np.empty(q.shape, out_dtype)
    elif (out.dtype != out_dtype or out.ndim != 2 or out.shape[0] < q.shape[0] or out.shape[1] != q.shape[1]
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"out must be a writeable C-contiguous (>= {q.shape[0]}, {q.shape[1]}) {out_dtype} array")
    if q.size and out_dtype == np.uint16:
        _dequantize_stepped_half(np.ascontiguousarray(q).reshape(-1), offset, row_step, col_step, head, out.reshape(-1))
    elif q.size:
        _dequantize_stepped(np.ascontiguousarray(q), offset, row_step, col_step, head, out)
    return out


def token_deltas(codes: np.ndarray) -> np.ndarray:
    """(n, e) int8 codes -> (e, n): per channel, each code minus the previous token's, wrapping."""
    t = np.ascontiguousarray(np.asarray(codes, np.int8).T)
    out = t.copy()
    np.subtract(t[:, 1:], t[:, :-1], out=out[:, 1:], dtype=np.int8, casting="unsafe")
    return out


def undo_token_deltas(deltas: np.ndarray) -> np.ndarray:
    """token_deltas' inverse: (e, n) int8 differences -> (n, e) codes."""
    deltas = np.ascontiguousarray(deltas)
    if deltas.ndim != 2 or deltas.dtype != np.int8:
        raise ValueError(f"deltas must be an (e, n) int8 matrix, not {deltas.dtype} {deltas.shape}")
    codes = np.empty(deltas.shape[::-1], np.int8)
    if deltas.size:
        _undo_token_deltas(deltas, codes)
    return codes
