"""svd: a low-rank factorisation of every head of every layer's K and V.

Each head's (n, head_dim) matrix X becomes A (n, r) = U_r S_r and B (r, head_dim) = V_r^T.
The rank r is the smallest that keeps `energy` of the squared singular values, or the one
that meets a target `ratio`, or a fixed `rank`. A is token-major, so a prefix of tokens
decodes from a prefix of A's rows; B belongs to no token. Factors are stored as f16, or as
int8 codes with per-row f16 scales.

BLAS runs single-threaded here: its idle threads spin, and would starve the Numba kernels
that run right after on a 2-core machine (measured: a 40x slowdown of the next kernel).
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from .. import kernels
from ..errors import CodecError
from .base import register
from .layout import LayoutSpec
from .tensorwise import TensorCodec

FACTOR_TYPES = ("f16", "int8")


@register
class SVDCodec(TensorCodec):
    """Low rank per head; rank by energy threshold, target ratio, or fixed."""

    name = "svd"

    def __init__(self, energy: float = 0.99, ratio: float | None = None, rank: int | None = None,
                 factors: str = "f16", head_dim: int | None = None):
        if sum(x is not None for x in (ratio, rank)) > 1:
            raise CodecError("give svd a target ratio or a fixed rank, not both")
        if not 0 < energy <= 1:
            raise CodecError(f"energy must be in (0, 1], not {energy}")
        if factors not in FACTOR_TYPES:
            raise CodecError(f"factors must be one of {FACTOR_TYPES}, not {factors!r}")
        self._head_dim_given = head_dim is not None  # else one SVD per head of the model's own size
        self._p = {"energy": energy, "ratio": ratio, "rank": rank, "factors": factors,
                   "head_dim": 64 if head_dim is None else head_dim}

    def _rank(self, s: np.ndarray, n: int, d: int) -> int:
        p = self._p
        if p["rank"] is not None:
            r = int(p["rank"])
        elif p["ratio"] is not None:
            per_value = 1 if p["factors"] == "int8" else 2
            r = int(2 * n * d / (float(p["ratio"]) * (n + d) * per_value))
        else:
            energy = np.cumsum(s.astype(np.float64) ** 2)
            r = int(np.searchsorted(energy, p["energy"] * energy[-1]) + 1) if energy[-1] > 0 else 1
        return max(1, min(r, len(s)))

    def encode_tensor(self, m: np.ndarray, kind: str, spec: LayoutSpec) -> tuple[dict, dict]:
        x = kernels.half_bits_to_float32(m) if m.dtype == np.uint16 else m
        if spec.channel_major:
            x = kernels.transpose(x)
        n, e = x.shape
        d = int(self._p["head_dim"])
        if e % d:
            raise CodecError(f"head_dim {d} does not divide n_embd {e}")
        a_parts, b_parts, ranks = [], [], []
        for h in range(e // d):
            with threadpool_limits(1, user_api="blas"):
                u, s, vt = np.linalg.svd(x[:, h * d : (h + 1) * d], full_matrices=False)
            r = self._rank(s, n, d)
            a_parts.append(u[:, :r] * s[:r])
            b_parts.append(vt[:r])
            ranks.append(r)
        a = np.ascontiguousarray(np.concatenate(a_parts, axis=1), dtype=np.float32)
        b = np.ascontiguousarray(np.concatenate(b_parts, axis=0), dtype=np.float32)
        arrays = {**self._store("a", a, 1), **self._store("b", b, 0)}
        return arrays, {"ranks": ranks}

    def _store(self, name: str, f: np.ndarray, per_row: int) -> dict:
        if self._p["factors"] == "f16":
            return {name: (kernels.float32_to_half_bits(f), per_row)}
        qz = kernels.quantize(f, bits=8, group=f.shape[1], axis="token")
        return {name: (qz.q, per_row), name + "_scale": (qz.scale, per_row)}

    def _load(self, arrays: dict, name: str) -> np.ndarray:
        if self._p["factors"] == "f16":
            return kernels.half_bits_to_float32(arrays[name])
        q = arrays[name]
        qz = kernels.Quantized(q, arrays[name + "_scale"], None, 8, q.shape[1], "token")
        return kernels.dequantize(qz, np.float32)

    def decode_tensor(self, arrays: dict, kind: str, spec: LayoutSpec, shape, out_dtype, info: dict) -> np.ndarray:
        a, b = self._load(arrays, "a"), self._load(arrays, "b")
        ranks = [int(r) for r in info["ranks"]]
        d = int(self._p["head_dim"])
        if sum(ranks) != a.shape[1] or b.shape != (sum(ranks), d):
            raise CodecError("svd factors do not match their recorded ranks")
        heads, off = [], 0
        with threadpool_limits(1, user_api="blas"):
            for r in ranks:
                heads.append(a[:, off : off + r] @ b[off : off + r])  # contiguous: BLAS, not numpy's loop
                off += r
        out = np.concatenate(heads, axis=1)
        if out_dtype == np.uint16:
            out = kernels.float32_to_half_bits(np.clip(out, -65504, 65504))
        return kernels.transpose(out) if spec.channel_major else out
