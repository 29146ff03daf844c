"""Plain NumPy references for every kernel: slow, obvious, and independent of Numba."""

from __future__ import annotations

import numpy as np


def half_to_float(bits: np.ndarray) -> np.ndarray:
    return bits.view(np.float16).astype(np.float32)


def float_to_half(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x.astype(np.float32).astype(np.float16).view(np.uint16)


def _f16(v) -> np.float32:
    """A float32 value rounded to half and back."""
    return np.float32(np.float16(np.float32(v)))


def quantize_groups(x: np.ndarray, group: int, qmax: int, symmetric: bool):
    """x: (n, e) float32, groups along axis 1. Returns q int8, scale and zero as half bits."""
    n, e = x.shape
    ng = -(-e // group)
    q = np.zeros((n, e), np.int8)
    scale = np.zeros((n, ng), np.uint16)
    zero = np.zeros((n, ng), np.uint16)
    for i in range(n):
        for g in range(ng):
            seg = x[i, g * group : (g + 1) * group]
            lo, hi = np.float32(seg.min()), np.float32(seg.max())
            if symmetric:
                s = _f16(np.float64(max(abs(lo), abs(hi))) / qmax)
                z = np.float32(0)
            else:
                s = _f16(np.float64(np.float32(hi - lo)) / qmax)
                z = _f16(lo)
            inv = np.float32(1) / s if s > 0 else np.float32(0)
            codes = np.rint((seg - z) * inv)
            q[i, g * group : (g + 1) * group] = np.clip(codes, -qmax if symmetric else 0, qmax)
            scale[i, g] = np.float16(s).view(np.uint16)
            zero[i, g] = np.float16(z).view(np.uint16)
    return q, scale, zero


def dequantize_groups(q, scale, zero, group):
    """Inverse of quantize_groups, in float32."""
    s = np.repeat(half_to_float(scale), group, axis=1)[:, : q.shape[1]]
    z = np.repeat(half_to_float(zero), group, axis=1)[:, : q.shape[1]]
    return q.astype(np.float32) * s + z


def hadamard(d: int) -> np.ndarray:
    """The orthonormal Sylvester Hadamard matrix of order d (a power of two)."""
    h = np.ones((1, 1))
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(d)


def rotate(x: np.ndarray, head_dim: int) -> np.ndarray:
    """x: (n, e) float -> every head of head_dim channels multiplied by the Hadamard matrix."""
    n, e = x.shape
    return (x.reshape(n, e // head_dim, head_dim).astype(np.float64) @ hadamard(head_dim)).reshape(n, e)


def pack_codes(q: np.ndarray, bits: int, offset: int) -> np.ndarray:
    """8 // bits codes per byte, the first in the lowest bits; a short last byte zero-filled."""
    per = 8 // bits
    u = (q.astype(np.int16) + offset).astype(np.uint8) & ((1 << bits) - 1)
    pad = -u.shape[1] % per
    u = np.concatenate([u, np.zeros((u.shape[0], pad), np.uint8)], axis=1)
    out = np.zeros((u.shape[0], u.shape[1] // per), np.uint8)
    for s in range(per):
        out |= u[:, s::per] << (s * bits)
    return out


def quantize_stepped(x: np.ndarray, offset, row_step, col_step) -> np.ndarray:
    """x: (n, e) float32 -> int8 codes rint((x - offset) / (row_step[t, c // head] * col_step[c]))."""
    head = x.shape[1] // row_step.shape[1]
    step = np.repeat(row_step, head, axis=1) * col_step[None, :]
    return np.clip(np.rint((x - offset[None, :]) / step), -127, 127).astype(np.int8)


def dequantize_stepped(q: np.ndarray, offset, row_step, col_step) -> np.ndarray:
    """quantize_stepped's inverse, as float32 values before rounding to the output type."""
    head = q.shape[1] // row_step.shape[1]
    step = np.repeat(row_step, head, axis=1) * col_step[None, :]
    return q.astype(np.float32) * step + offset[None, :]
