"""Group quantization's public entry points: validate, allocate, call the kernels of quant.py.

`Quantized` holds the codes and their per-group scales; `quantize`, `quantize_transposed` and
`dequantize` check shapes and dtypes and pick the kernel for the axis and the output.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .dequant import _dequantize_codes_transposed_half, _dequantize_cols, _dequantize_flat_half, _dequantize_rows
from .hadamard import check_head_dim
from .layout import transpose_bytes
from .quant import (
    _quantize_channel_major,
    _quantize_cols,
    _quantize_flat,
    _quantize_rows,
)

AXES = ("token", "channel")  # groups along channels within a token, or along tokens within a channel

@dataclass(frozen=True)
class Quantized:
    """Integer codes with their per-group f16 scales (and minimums when asymmetric).

    q: (n, e) int8 codes. scale, zero: uint16 half bits, (n, ceil(e/group)) for axis
    'token' or (ceil(n/group), e) for axis 'channel'; zero is None when symmetric.
    finite: whether every input value was finite, where the kernel found out while quantizing
    (per-token groups without rotation); None where it did not look.
    """

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray | None
    bits: int
    group: int
    axis: str
    head_dim: int = 0
    finite: bool | None = None

    @property
    def qmax(self) -> int:
        return qmax(self.bits, self.zero is None)


def qmax(bits: int, symmetric: bool) -> int:
    """Largest code: symmetric codes span [-qmax, qmax], asymmetric ones [0, qmax]."""
    return (1 << (bits - 1)) - 1 if symmetric else (1 << bits) - 1


def _matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected an (n, e) matrix, got shape {x.shape}")
    if x.dtype not in (np.uint16, np.float32):
        raise TypeError(f"expected uint16 half bits or float32, got {x.dtype}")
    return np.ascontiguousarray(x)


def _check_codes(bits: int, group: int, symmetric: bool) -> None:
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"bits must be 2..8, not {bits}")
    if not symmetric and bits == 8:
        raise ValueError("asymmetric codes span [0, 2**bits - 1]: at most 7 bits fit an int8")
    if group < 1:
        raise ValueError(f"group must be positive, not {group}")


def quantize(x: np.ndarray, *, bits: int = 8, group: int = 32, axis: str = "token",
             symmetric: bool = True, head_dim: int = 0, out: tuple | None = None) -> Quantized:
    """x: (n, e) uint16 half bits or float32 -> group-wise integer codes.

    head_dim > 0 rotates each head of head_dim channels first (axis 'token' only). out, when
    given, is (q, scale, zero) to write into (see _outputs; zero None when symmetric).
    Non-finite inputs are the caller's to refuse: the result's `finite` says whether there were
    any where it is not None, and count_nonfinite_half counts them.
    """
    x = _matrix(x)
    _check_codes(bits, group, symmetric)
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, not {axis!r}")
    n, e = x.shape
    top = qmax(bits, symmetric)
    finite = None
    if axis == "token":
        if head_dim:
            check_head_dim(e, head_dim)
        q, scale, zero = _outputs(out, (n, e), (n, -(-e // group)), symmetric)
        if not head_dim and e % group == 0:
            finite = not (n and e and _quantize_flat(x.reshape(-1), group, top, symmetric, q.reshape(-1),
                                                     scale.reshape(-1), zero.reshape(-1)))
        elif n and e:
            _quantize_rows(x, group, top, symmetric, head_dim, q, scale, zero)
    else:
        if head_dim:
            raise ValueError("rotation applies to per-token groups (axis 'token') only")
        q, scale, zero = _outputs(out, (n, e), (-(-n // group), e), symmetric)
        if n and e:
            _quantize_cols(x, group, top, symmetric, q, scale, zero)
    return Quantized(q, scale, None if symmetric else zero, bits, group, axis, head_dim, finite)


def quantize_transposed(x_t: np.ndarray, *, bits: int = 8, group: int = 32, symmetric: bool = True,
                        out: tuple | None = None) -> Quantized:
    """quantize(x_t.T, axis='token') for x_t: (e, n) uint16 half bits or float32, channel-major
    (a V cache as llama.cpp stores it), with e a multiple of group and of 8, without transposing
    the values: they are quantized along tokens, and only the int8 codes are transposed. out as
    quantize's."""
    x_t = _matrix(x_t)
    _check_codes(bits, group, symmetric)
    e, n = x_t.shape
    if e % group or e % 8:
        raise ValueError(f"{e} channels are not a multiple of the group {group} and of 8")
    q, scale, zero = _outputs(out, (n, e), (n, e // group), symmetric)
    codes_t = _scratch(e, -(-n // 8) * 8)  # columns past n are never read: only n rows are written
    finite = not (n and e and _quantize_channel_major(x_t, group, qmax(bits, symmetric), symmetric, codes_t,
                                                      scale, zero))
    if n:
        transpose_bytes(codes_t, out=q.view(np.uint8))
    return Quantized(q, scale, None if symmetric else zero, bits, group, "token", finite=finite)


def _outputs(out: tuple | None, q_shape: tuple, scale_shape: tuple, symmetric: bool) -> tuple:
    """(q, scale, zero): new arrays, or the caller's `out` checked. q: int8 q_shape; scale and
    zero: uint16 scale_shape, all C-contiguous and writeable (not necessarily aligned: views of a
    payload where they will be stored). zero is None in out when symmetric (a work array then)."""
    if out is None:
        return np.empty(q_shape, np.int8), np.empty(scale_shape, np.uint16), np.empty(scale_shape, np.uint16)
    q, scale, zero = out
    want = [(q, np.int8, q_shape), (scale, np.uint16, scale_shape)]
    if not symmetric:
        want.append((zero, np.uint16, scale_shape))
    for a, dtype, shape in want:
        if a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"out arrays must be writeable C-contiguous {shape} {np.dtype(dtype)}, "
                             f"not {a.shape} {a.dtype}")
    return q, scale, np.empty(scale_shape, np.uint16) if symmetric else zero


def dequantize(qz: Quantized, out_dtype=np.uint16, n_rows: int | None = None,
               transposed: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """Quantized -> (n, e) uint16 half bits or float32; n_rows decodes only the first rows.

    With axis 'channel', n_rows must end on a group boundary or at the last row.
    transposed=True (axis 'token' only) returns the (e, n) transpose, written directly.
    out, when given, is the array of that shape and dtype to write into: C-contiguous, or when
    transposed with contiguous rows (a view of a wider state's tensor, as a shared prefix joins).
    """
    out_dtype = np.dtype(out_dtype)
    if out_dtype not in (np.uint16, np.float32):
        raise TypeError(f"out_dtype must be uint16 (half bits) or float32, not {out_dtype}")
    n, e = qz.q.shape
    rows = n if n_rows is None else n_rows
    if not 0 <= rows <= n:
        raise ValueError(f"n_rows {rows} outside [0, {n}]")
    if transposed and qz.axis != "token":
        raise ValueError("a transposed decode needs per-token groups")
    shape = (e, rows) if transposed else (rows, e)
    if out is None:
        out = np.empty(shape, dtype=out_dtype)
    elif (out.shape != shape or out.dtype != out_dtype or not out.flags.writeable
          or not (out.flags.c_contiguous or (transposed and out.strides[1] == out.itemsize))):
        raise ValueError(f"out must be a writeable {shape} {out_dtype} array with contiguous rows, not "
                         f"{out.shape} {out.dtype}")
    if rows == 0 or e == 0:
        return out
    symmetric = qz.zero is None
    stored_zero = qz.scale if symmetric else qz.zero  # for the fast kernels, which do not read it when symmetric
    if qz.axis == "token" and not qz.head_dim and not transposed and e % qz.group == 0 and out_dtype == np.uint16:
        q, scale, zero = (np.ascontiguousarray(a[:rows]) for a in (qz.q, qz.scale, stored_zero))
        _dequantize_flat_half(q.reshape(-1), scale.reshape(-1), zero.reshape(-1), qz.group, symmetric, out.reshape(-1))
        return out
    if transposed and not qz.head_dim and e % qz.group == 0 and e % 8 == 0 and out_dtype == np.uint16:
        # Transpose the int8 codes (8x8 blocks in 64-bit words), then dequantize along tokens:
        # 4x faster than transposing each value as it is decoded (the `kernels` suite).
        codes_t = transpose_bytes(qz.q[:rows], out=_scratch(e, -(-rows // 8) * 8))
        row_stride = out.strides[0] // out.itemsize
        flat = out.reshape(-1) if out.flags.c_contiguous else np.lib.stride_tricks.as_strided(
            out, shape=((e - 1) * row_stride + rows,), strides=(out.itemsize,), writeable=True)
        _dequantize_codes_transposed_half(codes_t, qz.scale[:rows], stored_zero[:rows], qz.group, symmetric, flat,
                                          row_stride)
        return out
    zero = qz.zero if not symmetric else np.zeros_like(qz.scale)
    if qz.axis == "token":
        _dequantize_rows(qz.q[:rows], qz.scale[:rows], zero[:rows], qz.group, qz.head_dim, out, transposed)
    else:
        if rows != n and rows % qz.group:
            raise ValueError(f"n_rows {rows} cuts a group of {qz.group} tokens")
        g = -(-rows // qz.group)
        _dequantize_cols(qz.q[:rows], qz.scale[:g], zero[:g], qz.group, out)
    return out


_SCRATCH = threading.local()


def _scratch(rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) int8 work array, this thread's, reused across calls (a restore decodes
    dozens of tensors of the same shape)."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < rows * cols:
        buf = _SCRATCH.buf = np.empty(max(rows * cols, 1 << 16), np.int8)
    return buf[: rows * cols].reshape(rows, cols)
