"""Cutting a KVState at a cell and joining the pieces back, bit for bit.

The store keeps a shared prefix (a system prompt, a document) once, and each conversation's
state as the part after it; restoring joins the two.
"""

from __future__ import annotations

import numpy as np

from .errors import KVCPUError
from .state import CacheBlock, CellStream, KVState, Tensor


def _tensor_cells(t: Tensor, start: int) -> Tensor:
    data = t.data[:, start:] if t.transposed else t.data[start:]
    return Tensor(t.ggml_type, np.ascontiguousarray(data), t.transposed)


def _stream_tail(s: CellStream, start: int) -> CellStream | None:
    if start >= s.n_cells:
        return None
    first_id = int(s.n_seq[:start].sum())
    return CellStream(s.positions[start:].copy(), s.n_seq[start:].copy(), s.seq_ids[first_id:].copy(), s.v_trans,
                      [_tensor_cells(t, start) for t in s.k], [_tensor_cells(t, start) for t in s.v],
                      None if s.ext is None else s.ext[start:].copy())


def _one_cache(state: KVState) -> list:
    if len(state.blocks) != 1:
        raise KVCPUError("splicing needs a one-cache state (not a sliding-window one)")
    return state.blocks[0].streams


def tail(state: KVState, start: int) -> KVState:
    """The cells from `start` on (and the tokens from `start` on): head(start)'s complement."""
    streams = [None if s is None else _stream_tail(s, start) for s in _one_cache(state)]
    tokens = None if state.tokens is None else state.tokens[start:].copy()
    return KVState(state.seq_id, [CacheBlock(streams)], state.cell_ext_bytes, tokens)


def join(prefix: KVState, suffix: KVState) -> KVState:
    """prefix's cells, then suffix's: join(s.head(n), tail(s, n)) == s."""
    a, b = _one_cache(prefix), _one_cache(suffix)
    if len(a) != len(b) or prefix.seq_id != suffix.seq_id:
        raise KVCPUError("cannot join states of different shapes")
    streams = [x if y is None else y if x is None else _join_streams(x, y) for x, y in zip(a, b)]
    tokens = None
    if prefix.tokens is not None and suffix.tokens is not None:
        tokens = np.concatenate([prefix.tokens, suffix.tokens]).astype(np.int32)
    return KVState(prefix.seq_id, [CacheBlock(streams)], prefix.cell_ext_bytes, tokens)


def _join_streams(x: CellStream, y: CellStream) -> CellStream:
    if x.v_trans != y.v_trans or len(x.k) != len(y.k):
        raise KVCPUError("cannot join streams of different layouts")

    def cat(s: Tensor, t: Tensor) -> Tensor:
        if s.ggml_type != t.ggml_type or s.transposed != t.transposed:
            raise KVCPUError("cannot join tensors of different types")
        return Tensor(s.ggml_type, np.concatenate([s.data, t.data], axis=1 if s.transposed else 0), s.transposed)

    ext = None if x.ext is None else np.concatenate([x.ext, y.ext])
    return CellStream(np.concatenate([x.positions, y.positions]), np.concatenate([x.n_seq, y.n_seq]),
                      np.concatenate([x.seq_ids, y.seq_ids]), x.v_trans,
                      [cat(s, t) for s, t in zip(x.k, y.k)], [cat(s, t) for s, t in zip(x.v, y.v)], ext)
