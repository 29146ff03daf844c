"""The parser of llama.cpp's sequence-state bytes: a bounds-checked reader that checks every
structural field and refuses, with StateFormatError, anything it cannot interpret exactly."""

from __future__ import annotations

import numpy as np

from .errors import StateFormatError
from .ggml_types import BY_ID, STORAGE_DTYPE, GGMLType
from .state import STATE_MAGIC, CacheBlock, CellStream, KVState, Tensor, _meta_dtype

# Sanity bounds: far above any real model, low enough that a corrupted count fails fast.
MAX_BLOCKS = 2  # llama.cpp writes one block, or two for sliding-window (iSWA) caches
MAX_STREAMS = 256
MAX_SEQ = 256
MAX_LAYERS = 1024
MAX_EMBD = 1 << 20


class Parser:
    """A bounds-checked reader over the state bytes."""

    def __init__(self, buf, cell_ext_bytes: int):
        try:
            self.buf = np.frombuffer(buf, dtype=np.uint8)
        except (TypeError, ValueError) as exc:
            raise StateFormatError(f"not a bytes-like object: {exc}") from None
        self.off = 0
        self.ext = cell_ext_bytes

    def fail(self, reason: str, offset: int | None = None):
        raise StateFormatError(reason, self.off if offset is None else offset)

    def take(self, n: int, what: str) -> np.ndarray:
        if n < 0 or self.off + n > len(self.buf):
            self.fail(f"truncated: {what} needs {n} bytes, {len(self.buf) - self.off} remain")
        out = self.buf[self.off : self.off + n]
        self.off += n
        return out

    def u32(self, what: str) -> int:
        return int(self.take(4, what).view("<u4")[0])

    def i32(self, what: str) -> int:
        return int(self.take(4, what).view("<i4")[0])

    def u64(self, what: str) -> int:
        return int(self.take(8, what).view("<u8")[0])

    def bounded(self, value: int, lo: int, hi: int, what: str) -> int:
        if not lo <= value <= hi:
            self.fail(f"{what} = {value} is outside [{lo}, {hi}]", self.off - 4)
        return value

    def parse(self) -> KVState:
        magic = self.u32("magic")
        if magic != STATE_MAGIC:
            self.fail(f"bad magic 0x{magic:08x}, expected 0x{STATE_MAGIC:08x}", 0)
        seq_id = self.bounded(self.i32("seq_id"), -1, MAX_SEQ - 1, "seq_id")
        blocks = []
        while self.off < len(self.buf):
            if len(blocks) == MAX_BLOCKS:
                self.fail(f"trailing bytes after {MAX_BLOCKS} cache blocks")
            blocks.append(self.block(seq_id, blocks[0] if blocks else None))
        if not blocks:
            self.fail("no cache block after the header")
        return KVState(seq_id, blocks, self.ext, _backing=self.buf)

    def block(self, seq_id: int, first: CacheBlock | None) -> CacheBlock:
        start = self.off
        n_stream = self.bounded(self.u32("n_stream"), 1, MAX_STREAMS, "n_stream")
        if first is not None and n_stream != len(first.streams):
            self.fail(f"block has {n_stream} streams, the first block {len(first.streams)}", start)
        streams = []
        for _ in range(n_stream):
            n_cells = self.bounded(self.u32("cell_count"), 0, 1 << 30, "cell_count")
            streams.append(self.stream(n_cells, seq_id) if n_cells else None)
        block = CacheBlock(streams)
        if first is not None and first.n_cells and not block.n_cells:
            self.fail("an empty cache block follows a non-empty one (trailing bytes?)", start)
        return block

    def stream(self, n_cells: int, seq_id: int) -> CellStream:
        positions, n_seq, seq_ids, ext = self.meta(n_cells, seq_id)
        v_trans = self.bounded(self.u32("v_trans"), 0, 1, "v_trans")
        n_layer = self.bounded(self.u32("n_layer"), 1, MAX_LAYERS, "n_layer")
        k = [self.row_tensor(n_cells, "K") for _ in range(n_layer)]
        if v_trans:
            v = [self.transposed_tensor(n_cells) for _ in range(n_layer)]
        else:
            v = [self.row_tensor(n_cells, "V") for _ in range(n_layer)]
        for kind, ts in (("K", k), ("V", v)):
            if len({t.ggml_type for t in ts}) > 1:
                self.fail(f"{kind} layers disagree on their type: {sorted({t.type.name for t in ts})}")
        return CellStream(positions, n_seq, seq_ids, bool(v_trans), k, v, ext)

    def meta(self, n_cells: int, seq_id: int):
        ext = self.ext
        dtype = _meta_dtype(ext)
        start = self.off
        fast = self.buf[start : start + n_cells * dtype.itemsize]
        if len(fast) == n_cells * dtype.itemsize and np.all(fast.view(dtype)["n"] == 1):
            rec = self.take(len(fast), "cell metadata").view(dtype)
            positions, n_seq, seq_ids = (np.ascontiguousarray(rec[k]) for k in ("pos", "n", "seq"))
            ext_arr = np.ascontiguousarray(rec["ext"]).view(np.uint8).reshape(n_cells, ext) if ext else None
        else:
            positions, n_seq, ids, exts = [], [], [], []
            for _ in range(n_cells):
                positions.append(self.i32("cell pos"))
                n_seq.append(self.bounded(self.u32("n_seq_id"), 1, MAX_SEQ, "n_seq_id"))
                if ext:
                    exts.append(self.take(ext, "cell extension"))
                ids.extend(self.take(4 * n_seq[-1], "cell seq ids").view("<i4").tolist())
            positions = np.array(positions, dtype=np.int32)
            n_seq, seq_ids = np.array(n_seq, dtype=np.uint32), np.array(ids, dtype=np.int32)
            ext_arr = np.stack(exts) if ext else None
        if n_cells and int(positions.min()) < 0:
            self.fail("a cell has a negative position", start)
        if seq_id >= 0 and (np.any(n_seq != 1) or np.any(seq_ids != seq_id)):
            self.fail(f"cells carry seq ids other than the state's seq_id {seq_id}", start)
        if seq_ids.size and (seq_ids.min() < 0 or seq_ids.max() >= MAX_SEQ):
            self.fail("a cell seq id is out of range", start)
        return positions, n_seq, seq_ids, ext_arr

    def tensor_type(self, what: str) -> GGMLType:
        type_id = self.i32(f"{what} type")
        if type_id not in BY_ID:
            self.fail(f"{what} has unknown ggml type {type_id}", self.off - 4)
        return BY_ID[type_id]

    def row_tensor(self, n_cells: int, what: str) -> Tensor:
        t = self.tensor_type(what)
        row_bytes = self.u64(f"{what} row size")
        if row_bytes == 0 or row_bytes % t.type_size or row_bytes // t.type_size * t.block_size > MAX_EMBD:
            self.fail(f"{what} row size {row_bytes} does not fit type {t.name}", self.off - 8)
        raw = self.take(n_cells * row_bytes, f"{what} data")
        if t.numeric:
            return Tensor(t.id, raw.view(STORAGE_DTYPE[t.id]).reshape(n_cells, -1))
        return Tensor(t.id, raw.reshape(n_cells, row_bytes))

    def transposed_tensor(self, n_cells: int) -> Tensor:
        t = self.tensor_type("V")
        if not t.numeric:
            self.fail(f"transposed V of block type {t.name}", self.off - 4)
        elem = self.u32("V element size")
        if elem != t.type_size:
            self.fail(f"V element size {elem} does not match type {t.name}", self.off - 4)
        n_embd = self.bounded(self.u32("n_embd_v_gqa"), 1, MAX_EMBD, "n_embd_v_gqa")
        raw = self.take(n_embd * n_cells * elem, "V data")
        return Tensor(t.id, raw.view(STORAGE_DTYPE[t.id]).reshape(n_embd, n_cells), transposed=True)
