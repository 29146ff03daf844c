"""How a codec lays its payload out: aligned, blocked, columnar, interleaved.

A codec turns each K or V tensor into named 2-d arrays whose axis 0 runs over tokens
(`tokens_per_row` tokens per row: 1 for codes and per-token scales, the group size for
per-channel scales; 0 for an array that no token owns, such as a low-rank basis). A layout
decides where those arrays sit in one payload buffer, and which of them a partial decode
must read.

- aligned: tensor after tensor, every array starting on a 64-byte boundary.
- blocked: tensor after tensor, packed tight; tokens come in blocks of B that no group
  straddles, so the first k blocks of every array decode on their own (a prefix restore).
- columnar: like aligned, but codecs store codes channel-major (e, n): per-channel groups
  and statistics read contiguously, and a transposed V cache is encoded without a transpose.
- interleaved: block after block; inside a block, each layer's K next to its V. A prefix of
  the payload bytes is a prefix of the tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np

from ..errors import CodecError
from ..workers import run_jobs

ALIGN = 64
LAYOUTS = ("aligned", "blocked", "columnar", "interleaved")


@dataclass(frozen=True)
class LayoutSpec:
    """A layout and its parameter."""

    name: str = "blocked"
    block_tokens: int = 16

    def __post_init__(self):
        if self.name not in LAYOUTS:
            raise CodecError(f"unknown layout {self.name!r}; known: {', '.join(LAYOUTS)}")
        if self.block_tokens < 1:
            raise CodecError(f"block size must be positive, not {self.block_tokens}")

    @property
    def channel_major(self) -> bool:
        return self.name == "columnar"

    @property
    def blockwise(self) -> bool:
        return self.name in ("blocked", "interleaved")

    def token_group(self, group: int) -> int:
        """Tokens per per-channel group: capped so that no group straddles a block."""
        if not self.blockwise:
            return group
        g = min(group, self.block_tokens)
        while self.block_tokens % g:
            g -= 1
        return g


def _pad(n: int) -> int:
    return -n % ALIGN


def _entries(tensors: list[dict]) -> list[tuple[int, str, np.ndarray, int]]:
    out = []
    for ti, arrays in enumerate(tensors):
        for name, (arr, per_row) in arrays.items():
            out.append((ti, name, np.ascontiguousarray(arr), per_row))
    return out


def pack(spec: LayoutSpec, tensors: list[dict], n_tokens: int, split: bool = False) -> tuple[np.ndarray, list]:
    """tensors: per tensor {name: (array, tokens_per_row)} -> (payload uint8, index).

    The index lists, per array: tensor, name, dtype, shape, tokens_per_row, and where its
    bytes are (one extent, or one per block for interleaved). split copies on two threads.
    """
    entries = _entries(tensors)
    if spec.name == "interleaved":
        return _pack_interleaved(spec, entries, n_tokens)
    payload, index = _allocate(spec, [(ti, name, arr.dtype, arr.shape, per_row) for ti, name, arr, per_row in entries])
    run_jobs([partial(_copy_into, payload, item[5][0][0], arr) for (_, _, arr, _), item in zip(entries, index)], split)
    return payload, index


def reserve(spec: LayoutSpec, tensors: list[dict]) -> tuple[np.ndarray, list, list[dict]] | None:
    """pack's payload and index laid out before the arrays exist, for a codec that writes them in
    place (saving pack's copy): tensors per tensor {name: (dtype, shape, tokens_per_row)} ->
    (payload, index, per tensor {name: view of its place}). Every view must then be written
    whole. None for interleaved, whose arrays are cut into blocks."""
    if spec.name == "interleaved":
        return None
    entries = [(ti, name, np.dtype(dtype), tuple(shape), per_row)
               for ti, arrays in enumerate(tensors) for name, (dtype, shape, per_row) in arrays.items()]
    payload, index = _allocate(spec, entries)
    views: list[dict] = [{} for _ in tensors]
    for (ti, name, dtype, shape, _), item in zip(entries, index):
        start, size = item[5][0]
        views[ti][name] = payload[start : start + size].view(dtype).reshape(shape)
    return payload, index, views


def _allocate(spec: LayoutSpec, entries: list) -> tuple[np.ndarray, list]:
    """The payload for entries (tensor, name, dtype, shape, tokens_per_row), its padding zeroed
    and the rest left for the arrays, and its index."""
    align = spec.name != "blocked"
    index, offset = [], 0
    for ti, name, dtype, shape, per_row in entries:
        offset += _pad(offset) if align else 0
        nbytes = math.prod(shape) * dtype.itemsize
        index.append([ti, name, dtype.str, list(shape), per_row, [[offset, nbytes]]])
        offset += nbytes
    # Uninitialised, then only the padding zeroed: np.zeros cost a third of the packing (fresh
    # pages zeroed, then written again).
    payload = np.empty(offset, dtype=np.uint8)
    starts = [item[5][0][0] for item in index] + [offset]
    for item, following in zip(index, starts[1:]):
        payload[item[5][0][0] + item[5][0][1] : following] = 0
    return payload, index


def _copy_into(payload: np.ndarray, start: int, arr: np.ndarray) -> None:
    payload[start : start + arr.nbytes] = arr.reshape(-1).view(np.uint8)


def _rows_in_block(b: int, spec: LayoutSpec, per_row: int, n_rows: int) -> tuple[int, int]:
    if per_row == 0:  # not indexed by token: the whole array travels with the first block
        return (0, n_rows) if b == 0 else (n_rows, n_rows)
    start = b * spec.block_tokens // per_row
    return start, min(start + spec.block_tokens // per_row, n_rows)


def _pack_interleaved(spec, entries, n_tokens):
    n_blocks = -(-n_tokens // spec.block_tokens)
    # K and V of layer l are tensors 2l and 2l + 1 in a stream, so tensor order already pairs them.
    index = [[ti, name, arr.dtype.str, list(arr.shape), per_row, []] for ti, name, arr, per_row in entries]
    pieces, offset = [], 0
    for b in range(n_blocks):
        for (_, _, arr, per_row), item in zip(entries, index):
            r0, r1 = _rows_in_block(b, spec, per_row, arr.shape[0])
            piece = arr[r0:r1]
            item[5].append([offset, piece.nbytes])
            pieces.append(piece.reshape(-1).view(np.uint8))
            offset += piece.nbytes
    payload = np.concatenate(pieces) if pieces else np.zeros(0, np.uint8)
    return payload, index


def unpack(spec: LayoutSpec, payload: np.ndarray, index: list, n_tensors: int,
           n_tokens: int | None = None) -> list[dict]:
    """The arrays of every tensor, as {name: array}; with n_tokens, blockwise layouts read
    only the rows that cover the first n_tokens (rounded up to whole blocks)."""
    tensors: list[dict] = [{} for _ in range(n_tensors)]
    try:
        for ti, name, dtype, shape, per_row, extents in index:
            dtype = np.dtype(dtype)
            row_bytes = math.prod(shape[1:]) * dtype.itemsize  # np.prod cost 5 us an array, 120 arrays a restore
            rows = shape[0]
            if n_tokens is not None and spec.blockwise and per_row > 0:
                covered = -(-n_tokens // spec.block_tokens) * spec.block_tokens
                rows = min(rows, -(-covered // per_row))
            need = rows * row_bytes
            if len(extents) == 1:
                start, size = extents[0]
                if size < need or start + size > len(payload):
                    raise CodecError(f"array {name} of tensor {ti} runs past the payload")
                buf = payload[start : start + need]
            else:
                buf = _gather(payload, extents, need)
            tensors[ti][name] = buf.view(dtype).reshape([rows, *shape[1:]])
    except (ValueError, TypeError, IndexError) as exc:
        raise CodecError(f"payload index is inconsistent: {exc}") from None
    return tensors


def _gather(payload: np.ndarray, extents: list, need: int) -> np.ndarray:
    out = np.empty(need, dtype=np.uint8)
    filled = 0
    for start, size in extents:
        if filled >= need:
            break
        take = min(size, need - filled)
        if start + take > len(payload):
            raise CodecError("an interleaved block runs past the payload")
        out[filled : filled + take] = payload[start : start + take]
        filled += take
    if filled < need:
        raise CodecError("interleaved blocks hold fewer bytes than their array")
    return out
