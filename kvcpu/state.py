"""KVState: llama.cpp sequence-state bytes parsed into arrays, and serialized back bit-exactly.

The byte layout is the one written by llama_state_seq_get_data in the pinned
llama-cpp-python (see docs/design.md). The parser (state_parser.py) checks every structural
field and refuses, with StateFormatError, anything it cannot interpret exactly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from . import buffers
from .errors import StateFormatError, UnsupportedTypeError
from .ggml_types import BY_ID, STORAGE_DTYPE, GGMLType, ggml_type

STATE_MAGIC = 0xAF143CD8
# Which llama.cpp state layout this parser implements; bump when the pinned version changes it.
PARSER_VERSION = 1
LLAMA_CPP_PYTHON_VERSION = "0.3.36"

@dataclass(eq=False)
class Tensor:
    """One layer's K or V of one stream.

    `data` is C-contiguous in the stored orientation: (n_cells, n_embd) rows, or
    (n_embd, n_cells) when `transposed` (llama.cpp's v_trans). Block-quantized
    types keep their raw blocks as uint8 (n_cells, row_bytes).
    """

    ggml_type: int
    data: np.ndarray
    transposed: bool = False

    @property
    def type(self) -> GGMLType:
        return BY_ID[self.ggml_type]

    @property
    def n_cells(self) -> int:
        return self.data.shape[1] if self.transposed else self.data.shape[0]

    @property
    def n_embd(self) -> int:
        if self.transposed:
            return self.data.shape[0]
        t = self.type
        return self.data.shape[1] if t.numeric else self.data.shape[1] // t.type_size * t.block_size

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def rows(self) -> np.ndarray:
        """(n_cells, n_embd) in the storage dtype: a view (strided when transposed)."""
        return self.data.T if self.transposed else self.data

    def values(self) -> np.ndarray:
        """(n_cells, n_embd) numeric values: float16 or float32 (bf16 widened to float32)."""
        t = self.type
        if not t.numeric:
            raise UnsupportedTypeError(
                f"KV type {t.name} is kept as raw blocks; kvcpu does not expose its values"
            )
        rows = self.rows()
        if t.name == "bf16":
            return (rows.astype(np.uint32) << 16).view(np.float32)
        return rows

    @classmethod
    def from_rows(cls, type_id: int, rows: np.ndarray, transposed: bool = False) -> Tensor:
        """Build from (n_cells, n_embd) rows in the storage dtype (raw uint8 blocks for quantized types)."""
        t = ggml_type(type_id)
        if t.numeric:
            rows = np.asarray(rows).astype(STORAGE_DTYPE[t.id], copy=False)
        elif transposed:
            raise StateFormatError(f"a transposed V cannot hold block type {t.name}")
        data = np.ascontiguousarray(rows.T if transposed else rows)
        return cls(t.id, data, transposed)

    def head(self, n: int) -> Tensor:
        """The first n cells."""
        data = self.data[:, :n] if self.transposed else self.data[:n]
        return Tensor(self.ggml_type, np.ascontiguousarray(data), self.transposed)

    @classmethod
    def placeholder(cls, type_id: int, n_cells: int, n_embd: int, transposed: bool = False) -> Tensor:
        """A tensor with its shape and no memory yet: KVState.materialize gives it its place."""
        t = ggml_type(type_id)
        if t.numeric:
            dtype, shape = np.dtype(STORAGE_DTYPE[t.id]), (n_cells, n_embd)
        elif transposed:
            raise StateFormatError(f"a transposed V cannot hold block type {t.name}")
        else:
            dtype, shape = np.dtype(np.uint8), (n_cells, t.row_bytes(n_embd))
        shape = shape[::-1] if transposed else shape
        return cls(t.id, np.broadcast_to(np.zeros((), dtype), shape), transposed)


@dataclass(eq=False)
class CellStream:
    """One stream of one cache block: its cells' metadata and per-layer K and V."""

    positions: np.ndarray  # (n_cells,) int32
    n_seq: np.ndarray  # (n_cells,) uint32, how many seq ids each cell carries
    seq_ids: np.ndarray  # (sum(n_seq),) int32, flat
    v_trans: bool
    k: list[Tensor]
    v: list[Tensor]
    ext: np.ndarray | None = None  # (n_cells, ext_bytes) uint8, where the cache has cell extensions

    @property
    def n_cells(self) -> int:
        return len(self.positions)

    def head(self, n: int) -> CellStream:
        """The first n cells, with their K and V."""
        n = min(n, self.n_cells)
        n_ids = int(self.n_seq[:n].sum())
        ext = None if self.ext is None else self.ext[:n].copy()
        return CellStream(
            self.positions[:n].copy(), self.n_seq[:n].copy(), self.seq_ids[:n_ids].copy(),
            self.v_trans, [t.head(n) for t in self.k], [t.head(n) for t in self.v], ext,
        )


@dataclass(eq=False)
class CacheBlock:
    """One cache's part of the state; `streams[i]` is None where stream i holds no cells."""

    streams: list[CellStream | None]

    @property
    def n_cells(self) -> int:
        return sum(s.n_cells for s in self.streams if s is not None)


@dataclass(eq=False)
class KVState:
    """A parsed llama.cpp sequence state. `tokens` rides along and is not part of the bytes."""

    seq_id: int
    blocks: list[CacheBlock]
    cell_ext_bytes: int = 0
    tokens: np.ndarray | None = field(default=None)
    # the model's head size, when the engine that made the state said (0: unknown); like tokens,
    # not part of the bytes: llama.cpp's state records each cache's width, not how it splits
    head_dim: int = 0
    # (n,) uint8: the llama.cpp bytes these arrays were parsed from or materialized in, so that
    # serialized() hands them over without a copy while they still match (see _backed)
    _backing: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_bytes(cls, buf, cell_ext_bytes: int = 0) -> KVState:
        """Parse llama_state_seq_get_data bytes; arrays are zero-copy views of `buf`."""
        from .state_parser import Parser  # the parser builds these classes

        return Parser(buf, cell_ext_bytes).parse()

    def to_bytes(self) -> bytes:
        """The exact llama.cpp bytes: from_bytes(b).to_bytes() == b."""
        return b"".join(p if isinstance(p, bytes) else memoryview(p.data).cast("B") for p in self._parts())

    def serialized(self) -> np.ndarray:
        """The exact llama.cpp bytes as a (nbytes,) uint8 array, for llama.cpp to read: the
        buffer this state sits in when it still matches, else one serialization into a reused
        buffer. Valid while the state lives and is not changed."""
        if self._backed():
            return self._backing
        out = buffers.POOL.take(self.nbytes)
        self._write(out, place=False)
        return out

    def materialize(self) -> KVState:
        """Give every tensor (placeholders included) its place in one reused buffer laid out
        as llama.cpp's bytes, headers written; data not yet written is undefined. Returns self."""
        out = buffers.POOL.take(self.nbytes)
        self._write(out, place=True)
        self._backing = out
        return self

    def _write(self, out: np.ndarray, place: bool) -> None:
        """Write the bytes into `out`; with place, tensors become views of `out` instead of
        being copied into it."""
        off = 0
        for part in self._parts():
            if isinstance(part, bytes):
                out[off : off + len(part)] = np.frombuffer(part, np.uint8)
                off += len(part)
                continue
            size = part.nbytes
            dest = out[off : off + size].view(part.data.dtype).reshape(part.data.shape)
            if place:
                part.data = dest
            else:
                dest[...] = part.data
            off += size

    def _backed(self) -> bool:
        """Whether the backing buffer still holds exactly this state: every tensor still views
        its place in it, and every header and cell record still reads the same."""
        buf = self._backing
        if buf is None:
            return False
        base, off = buf.ctypes.data, 0
        for part in self._parts():
            if isinstance(part, bytes):
                if buf[off : off + len(part)].tobytes() != part:
                    return False
                off += len(part)
                continue
            if part.data.ctypes.data != base + off or not part.data.flags.c_contiguous:
                return False
            off += part.nbytes
        return off == buf.size

    def _parts(self):
        """The serialization in order: bytes for headers and cell records, Tensors for data."""
        yield struct.pack("<Ii", STATE_MAGIC, self.seq_id)
        for block in self.blocks:
            yield struct.pack("<I", len(block.streams))
            for stream in block.streams:
                if stream is None:
                    yield struct.pack("<I", 0)
                else:
                    yield from _stream_parts(stream)

    @property
    def n_tokens(self) -> int:
        """Cells of the first (full) cache block: the tokens the state holds."""
        return self.blocks[0].n_cells if self.blocks else 0

    @property
    def n_positions(self) -> int:
        """One past the highest position in the first block: the tokens the cells stand for.

        Equal to n_tokens, unless a codec merged cells (cluster), leaving gaps."""
        block = self.blocks[0] if self.blocks else None
        if block is None or not block.n_cells:
            return 0
        return max(int(s.positions.max()) for s in block.streams if s is not None) + 1

    @property
    def nbytes(self) -> int:
        """Length of to_bytes(), computed without serializing."""
        return sum(len(p) if isinstance(p, bytes) else p.nbytes for p in self._parts())

    def tensors_by_layer(self) -> list[Tensor]:
        """Every tensor in the order codecs encode them: per stream, layer by layer, K then V."""
        return [t for block in self.blocks for s in block.streams if s is not None
                for k, v in zip(s.k, s.v) for t in (k, v)]

    def tensors(self):
        """Yield (block, stream, layer, 'k'|'v', Tensor) for every tensor."""
        for bi, block in enumerate(self.blocks):
            for si, stream in enumerate(block.streams):
                if stream is None:
                    continue
                for kind, tensors in (("k", stream.k), ("v", stream.v)):
                    for li, t in enumerate(tensors):
                        yield bi, si, li, kind, t

    @property
    def kv_nbytes(self) -> int:
        """Bytes of the K and V payload alone."""
        return sum(t.nbytes for *_, t in self.tensors())

    def head(self, n_tokens: int) -> KVState:
        """A state holding only the first n_tokens cells of every stream."""
        blocks = [
            CacheBlock([None if s is None else s.head(n_tokens) for s in b.streams]) for b in self.blocks
        ]
        tokens = None if self.tokens is None else self.tokens[:n_tokens].copy()
        return KVState(self.seq_id, blocks, self.cell_ext_bytes, tokens, self.head_dim)

    def summary(self) -> str:
        """A human-readable description: blocks, layers, types and bytes."""
        lines = [f"KVState seq_id={self.seq_id} tokens={self.n_tokens} bytes={self.nbytes:,}"]
        for bi, block in enumerate(self.blocks):
            for si, s in enumerate(block.streams):
                if s is None:
                    lines.append(f"  block {bi} stream {si}: empty")
                    continue
                k, v = s.k[0] if s.k else None, s.v[0] if s.v else None
                kinfo = f"K {k.type.name} x{k.n_embd}" if k else "no K"
                vinfo = f"V {v.type.name} x{v.n_embd}" if v else "no V"
                lines.append(
                    f"  block {bi} stream {si}: {s.n_cells} cells, positions "
                    f"{int(s.positions.min())}..{int(s.positions.max())}, {len(s.k)} layers, "
                    f"{kinfo}, {vinfo}, v_trans={int(s.v_trans)}, "
                    f"{sum(t.nbytes for t in s.k + s.v):,} KV bytes"
                )
        return "\n".join(lines)


def _stream_parts(s: CellStream):
    yield struct.pack("<I", s.n_cells)
    yield _meta_bytes(s)
    yield struct.pack("<II", int(s.v_trans), len(s.k))
    for t in s.k:
        yield struct.pack("<iQ", t.ggml_type, t.type.row_bytes(t.n_embd))
        yield t
    for t in s.v:
        if s.v_trans:
            yield struct.pack("<iII", t.ggml_type, t.type.type_size, t.n_embd)
        else:
            yield struct.pack("<iQ", t.ggml_type, t.type.row_bytes(t.n_embd))
        yield t


def _meta_bytes(s: CellStream) -> bytes:
    ext = s.ext.shape[1] if s.ext is not None else 0
    if np.all(s.n_seq == 1):
        rec = np.empty(s.n_cells, dtype=_meta_dtype(ext))
        rec["pos"], rec["n"], rec["seq"] = s.positions, 1, s.seq_ids
        if ext:
            rec["ext"] = s.ext.view(f"V{ext}").reshape(-1)
        return rec.tobytes()
    out, j = [], 0
    for i in range(s.n_cells):
        n = int(s.n_seq[i])
        out.append(struct.pack("<iI", int(s.positions[i]), n))
        if ext:
            out.append(s.ext[i].tobytes())
        out.append(s.seq_ids[j : j + n].astype("<i4").tobytes())
        j += n
    return b"".join(out)


def _meta_dtype(ext: int) -> np.dtype:
    fields = [("pos", "<i4"), ("n", "<u4")] + ([("ext", f"V{ext}")] if ext else []) + [("seq", "<i4")]
    return np.dtype(fields)
