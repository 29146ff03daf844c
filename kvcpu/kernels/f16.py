"""IEEE half precision carried as uint16 bits (Numba has no float16).

Where the CPU converts halves itself (x86 with F16C, every 64-bit Arm), the conversions are
LLVM's own fpext/fptrunc to `half`, which compile to vcvtph2ps/vcvtps2ph and vectorize: a
restore converts every value of the state, and the bit-operation versions below, though
branch-free, cost about 25 integer operations a value. Elsewhere the bit operations are used;
both round to nearest even and agree on every non-NaN value (tests check both).
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import binding, ir
from numba import prange, types
from numba.extending import intrinsic, overload

from ._flags import inline, parallel_kernel


@intrinsic
def _f32_as_u32(typingctx, x):
    """Reinterpret a float32's bits as uint32 (an LLVM bitcast, no conversion)."""
    if x != types.float32:
        return None
    return types.uint32(types.float32), lambda ctx, b, sig, args: b.bitcast(args[0], ir.IntType(32))


@intrinsic
def _u32_as_f32(typingctx, x):
    """Reinterpret the low 32 bits of an integer as a float32 (Numba widens uint32 arithmetic)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(ctx, builder, sig, args):
        bits = args[0]
        if x.bitwidth > 32:
            bits = builder.trunc(bits, ir.IntType(32))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(x), codegen


def _cpu_converts_halves() -> bool:
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    try:
        return bool(binding.get_host_cpu_features().get("f16c", False))
    except RuntimeError:  # llvmlite cannot read this host's features
        return False


HARDWARE_F16 = _cpu_converts_halves()


@intrinsic
def _half_bits_fpext(typingctx, h):
    """uint16 half bits -> float32 by LLVM's fpext (one instruction with F16C)."""
    if not isinstance(h, types.Integer):
        return None

    def codegen(ctx, builder, sig, args):
        bits = args[0]
        if h.bitwidth != 16:
            bits = builder.trunc(bits, ir.IntType(16)) if h.bitwidth > 16 else builder.zext(bits, ir.IntType(16))
        return builder.fpext(builder.bitcast(bits, ir.HalfType()), ir.FloatType())

    return types.float32(h), codegen


@intrinsic
def _fptrunc_half_bits(typingctx, x):
    """float32 -> uint16 half bits by LLVM's fptrunc: round to nearest even, overflow to inf."""
    if x != types.float32:
        return None

    def codegen(ctx, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@inline
def half_to_float(h):
    """uint16 half bits -> float32, exactly (the CPU's conversion where it has one)."""
    if HARDWARE_F16:
        return _half_bits_fpext(np.uint16(h))
    return half_to_float_bits(h)


@inline
def float_to_half(x):
    """float32 -> uint16 half bits, round to nearest even, overflow to inf."""
    if HARDWARE_F16:
        return _fptrunc_half_bits(np.float32(x))
    return float_to_half_bits(x)


@inline
def half_to_float_bits(h):
    """uint16 half bits -> float32 by bit operations: exact for zeros, subnormals, normals, inf and NaN.

    Branch-free (selects only), so that loops over it vectorize.
    """
    h = np.uint32(h)
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    exp = h & np.uint32(0x7C00)
    # Normal numbers: rebias the exponent (15 -> 127) and widen the mantissa.
    normal = ((h & np.uint32(0x7FFF)) + np.uint32(0x1C000)) << np.uint32(13)
    # Inf and NaN: the rebias above lands on exponent 143; they need 255.
    normal += np.uint32(0x70 << 23) * np.uint32(exp == np.uint32(0x7C00))
    # Zero and subnormals: mantissa * 2**-24 is exact in float32.
    sub = _f32_as_u32(np.float32(h & np.uint32(0x03FF)) * np.float32(5.9604644775390625e-08))
    return _u32_as_f32(sign | (normal if exp != 0 else sub))


@inline
def float_to_half_bits(x):
    """float32 -> uint16 half bits by bit operations, rounding to nearest even (NumPy's
    algorithm), overflow to inf.

    Every case is computed and the right one selected, without branches, so loops vectorize.
    """
    f = _f32_as_u32(np.float32(x))
    sign = (f >> np.uint32(16)) & np.uint32(0x8000)
    a = f & np.uint32(0x7FFFFFFF)
    fexp = a & np.uint32(0x7F800000)
    sig = a & np.uint32(0x007FFFFF)
    # Normal halves: rebias the exponent, round the mantissa to 10 bits (ties to even); a
    # rounding carry runs into the exponent, which is right, up to inf.
    up = np.uint32((sig & np.uint32(0x3FFF)) != np.uint32(0x1000)) * np.uint32(0x1000)
    normal = ((fexp - np.uint32(0x38000000)) >> np.uint32(13)) + ((sig + up) >> np.uint32(13))
    # Subnormal halves: shift the full significand right by 1..11 more bits, then round.
    shift = np.uint32(min(max(113 - np.int32(fexp >> np.uint32(23)), 0), 31))
    ssig = (np.uint32(0x00800000) + sig) >> shift
    sticky = ((ssig & np.uint32(0x3FFF)) != np.uint32(0x1000)) | ((f & np.uint32(0x07FF)) != 0)
    sub = (ssig + np.uint32(sticky) * np.uint32(0x1000)) >> np.uint32(13)
    nan = np.uint32(0x7E00) | (sig >> np.uint32(13))
    res = normal
    res = sub if fexp <= np.uint32(0x38000000) else res
    res = np.uint32(0) if fexp < np.uint32(0x33000000) else res
    res = np.uint32(0x7C00) if fexp >= np.uint32(0x47800000) else res
    res = nan if a > np.uint32(0x7F800000) else res
    return np.uint16(sign | res)


@parallel_kernel
def _half_to_float(src, dst):
    """src: (n, m) uint16 bits; dst: (n, m) float32."""
    for i in prange(src.shape[0]):
        for j in range(src.shape[1]):
            dst[i, j] = half_to_float(src[i, j])


@parallel_kernel
def _float_to_half(src, dst):
    """src: (n, m) float32; dst: (n, m) uint16 bits."""
    for i in prange(src.shape[0]):
        for j in range(src.shape[1]):
            dst[i, j] = float_to_half(src[i, j])


def nonfinite(v):
    """1 (as uint32) when the stored element (half bits, or a float) is inf or NaN, else 0."""


@overload(nonfinite, inline="always")
def _nonfinite_impl(v):
    if v == types.uint16:  # the exponent all ones
        return lambda v: np.uint32((v & np.uint16(0x7C00)) == np.uint16(0x7C00))
    if isinstance(v, types.Float):
        return lambda v: np.uint32(not np.isfinite(v))
    return None


@parallel_kernel
def _count_nonfinite(src):
    """src: (n, m) uint16 bits; how many are inf or NaN."""
    total = 0
    for i in prange(src.shape[0]):
        row = 0
        for j in range(src.shape[1]):
            row += nonfinite(src[i, j])
        total += row
    return total


def _as_2d(a: np.ndarray) -> np.ndarray:
    return a.reshape(1, -1) if a.ndim == 1 else a


def half_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bits: uint16 array of any 1-d or 2-d shape -> float32 array of the same shape."""
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    out = np.empty(bits.shape, dtype=np.float32)
    _half_to_float(_as_2d(bits), _as_2d(out))
    return out


def float32_to_half_bits(x: np.ndarray) -> np.ndarray:
    """x: float32 array (1-d or 2-d) -> uint16 half bits, round to nearest even."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, dtype=np.uint16)
    _float_to_half(_as_2d(x), _as_2d(out))
    return out


def count_nonfinite_half(bits: np.ndarray) -> int:
    """How many of the uint16 half values are inf or NaN."""
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    return int(_count_nonfinite(_as_2d(bits))) if bits.size else 0
