"""Layout transforms: tiled, parallel transposes between token-major and channel-major matrices."""

from __future__ import annotations

import numpy as np
from numba import prange

from ._flags import parallel_kernel

_TILE = 64


@parallel_kernel
def _transpose(src, dst):
    """src: (n, e); dst: (e, n). Tiles keep both sides in cache."""
    n, e = src.shape
    n_tiles = (n + _TILE - 1) // _TILE
    for t in prange(n_tiles):
        i0 = t * _TILE
        i1 = min(i0 + _TILE, n)
        for j0 in range(0, e, _TILE):
            j1 = min(j0 + _TILE, e)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    dst[j, i] = src[i, j]


def transpose(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x: (n, e) -> (e, n) C-contiguous copy (into `out` when given)."""
    if x.ndim != 2:
        raise ValueError(f"transpose takes a 2-d array, not shape {x.shape}")
    if out is None:
        out = np.empty((x.shape[1], x.shape[0]), dtype=x.dtype)
    elif out.shape != (x.shape[1], x.shape[0]) or out.dtype != x.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {x.dtype} array of shape {(x.shape[1], x.shape[0])}")
    if x.size:
        _transpose(np.ascontiguousarray(x), out)
    return out
