"""cluster: merge runs of neighbouring tokens whose keys and values are alike into one cell.

A run of up to `max_run` consecutive tokens, each with mean cosine similarity (over every
layer's K and V) of at least `threshold` to the token before it, becomes one cell holding the
run's mean K and V at the run's last position. Positions stay increasing and below the next
token's, so llama.cpp accepts the state and generation continues after it. The first
`keep_first` tokens (attention sinks) and the last `keep_last` are never merged. The merged
state is then stored by the `inner` codec.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..errors import CodecError
from ..ggml_types import BY_NAME
from ..state import CacheBlock, CellStream, KVState, Tensor
from .base import Codec, CompressedKV, codec, f16_kv_bytes, register

F16 = BY_NAME["f16"].id


@register
class ClusterCodec(Codec):
    """Token merging, then an inner codec for what remains."""

    name = "cluster"
    merges_cells = True

    def __init__(self, threshold: float = 0.6, max_run: int = 2, keep_first: int = 4, keep_last: int = 32,
                 inner: str = "f16"):
        if max_run < 1 or keep_first < 0 or keep_last < 1:
            raise CodecError("cluster needs max_run >= 1, keep_first >= 0 and keep_last >= 1")
        if inner == self.name:
            raise CodecError("cluster cannot be its own inner codec")
        codec(inner)  # fail now on an unknown name
        self._p = {"threshold": threshold, "max_run": max_run, "keep_first": keep_first,
                   "keep_last": keep_last, "inner": inner}

    def encode(self, state: KVState, layout: str = "blocked", block_tokens: int = 16) -> CompressedKV:
        if len(state.blocks) != 1 or sum(s is not None for s in state.blocks[0].streams) != 1:
            raise CodecError("cluster merges one sequence of one cache (no sliding-window or multi-stream states)")
        si, stream = next((i, s) for i, s in enumerate(state.blocks[0].streams) if s is not None)
        tensors = stream.k + stream.v
        if np.any(stream.n_seq != 1):
            raise CodecError("cluster merges cells of one sequence; these cells are shared")
        if any(t.ggml_type != F16 for t in tensors):
            raise CodecError("cluster merges f16 caches only")
        rows = [_token_major(t) for t in tensors]
        bad = sum(kernels.count_nonfinite_half(r) for r in rows)
        if bad:
            raise CodecError(f"the state holds {bad} inf or NaN values; a lossy codec cannot encode them")
        starts = self._runs(kernels.cosine_to_previous(rows))
        merged = _merged_stream(stream, rows, starts)
        streams = [None] * len(state.blocks[0].streams)
        streams[si] = merged
        reduced = KVState(state.seq_id, [CacheBlock(streams)], state.cell_ext_bytes, state.tokens, state.head_dim)
        inner = codec(self._p["inner"]).encode(reduced, layout=layout)
        meta = {"inner_params": inner.params, "inner_meta": inner.meta, "cells": merged.n_cells,
                "merged_runs": int(np.sum(np.diff(starts) > 1))}
        return CompressedKV(self.name, self.params, inner.layout, meta, inner.sections, state.tokens,
                            state.n_tokens, f16_kv_bytes(state))

    def _runs(self, similarity: np.ndarray) -> np.ndarray:
        """Run boundaries, from 0 to n."""
        n = len(similarity)
        p = self._p
        starts, run = [0], 1
        for i in range(1, n):
            # The run so far covers tokens i - run .. i - 1; token i may join it.
            mergeable = i - run >= p["keep_first"] and i < n - p["keep_last"]
            if mergeable and run < p["max_run"] and similarity[i] >= p["threshold"]:
                run += 1
                continue
            starts.append(i)
            run = 1
        starts.append(n)
        return np.asarray(starts, dtype=np.int64)

    def decode(self, packed: CompressedKV, n_tokens: int | None = None) -> KVState:
        meta = packed.meta
        inner = CompressedKV(self._p["inner"], meta["inner_params"], packed.layout, meta["inner_meta"],
                             packed.sections, None, int(meta["cells"]), packed.f16_kv_bytes)
        state = codec(self._p["inner"], **meta["inner_params"]).decode(inner)
        if n_tokens is None:
            return state
        stream = next(s for s in state.blocks[0].streams if s is not None)
        keep = int(np.searchsorted(stream.positions, n_tokens))  # positions rise: cells before n_tokens
        if keep == 0:
            raise CodecError(f"no merged cell lies before token {n_tokens}")
        return state.head(keep)


def _token_major(t: Tensor) -> np.ndarray:
    data = t.data.view(np.uint16)
    return kernels.transpose(data) if t.transposed else data


def _merged_stream(stream: CellStream, rows: list[np.ndarray], starts: np.ndarray) -> CellStream:
    last = starts[1:] - 1
    merged = [kernels.mean_of_runs(r, starts) for r in rows]
    n_layer = len(stream.k)

    def tensor(i: int, transposed: bool) -> Tensor:
        m = kernels.transpose(merged[i]) if transposed else merged[i]
        return Tensor(F16, m.view(np.float16), transposed)

    ext = None if stream.ext is None else stream.ext[last].copy()
    return CellStream(
        positions=stream.positions[last].copy(), n_seq=stream.n_seq[last].copy(),
        seq_ids=np.repeat(stream.seq_ids[:1], len(last)).astype(np.int32), v_trans=stream.v_trans,
        k=[tensor(i, False) for i in range(n_layer)],
        v=[tensor(n_layer + i, stream.v_trans) for i in range(n_layer)], ext=ext,
    )
