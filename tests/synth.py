"""An independent writer of llama.cpp sequence-state bytes, for synthetic states in tests.

It follows docs/design.md's layout with plain struct calls, sharing no code with kvcpu.state.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

MAGIC = 0xAF143CD8
SIZES = {0: (1, 4), 1: (1, 2), 30: (1, 2), 8: (32, 34), 2: (32, 18)}  # type id -> (block, bytes)


@dataclass
class SynthStream:
    positions: list[int]
    seq_ids: list[list[int]]
    k: list[np.ndarray]  # per layer: (n_cells, n_embd) float32 values, or uint8 raw rows for block types
    v: list[np.ndarray]
    k_type: int = 1
    v_type: int = 1
    v_trans: bool = True
    ext: list[bytes] = field(default_factory=list)


def storage(values: np.ndarray, type_id: int) -> np.ndarray:
    """Values as they sit in the state: f32, f16, the top half of f32 for bf16, or raw blocks."""
    if type_id == 0:
        return values.astype("<f4")
    if type_id == 1:
        return values.astype("<f2")
    if type_id == 30:
        return (values.astype("<f4").view("<u4") >> 16).astype("<u2")
    return values.astype(np.uint8)


def write_state(seq_id: int, blocks: list[list[SynthStream | None]]) -> bytes:
    out = [struct.pack("<Ii", MAGIC, seq_id)]
    for streams in blocks:
        out.append(struct.pack("<I", len(streams)))
        for s in streams:
            if s is None:
                out.append(struct.pack("<I", 0))
                continue
            out.append(struct.pack("<I", len(s.positions)))
            for i, (pos, ids) in enumerate(zip(s.positions, s.seq_ids)):
                out.append(struct.pack("<iI", pos, len(ids)))
                if s.ext:
                    out.append(s.ext[i])
                out.append(struct.pack(f"<{len(ids)}i", *ids))
            out.append(struct.pack("<II", int(s.v_trans), len(s.k)))
            for k in s.k:
                data = storage(k, s.k_type)
                out.append(struct.pack("<iQ", s.k_type, data.nbytes // data.shape[0]))
                out.append(data.tobytes())
            for v in s.v:
                data = storage(v, s.v_type)
                if s.v_trans:
                    out.append(struct.pack("<iII", s.v_type, SIZES[s.v_type][1], v.shape[1]))
                    out.append(np.ascontiguousarray(data.T).tobytes())
                else:
                    out.append(struct.pack("<iQ", s.v_type, data.nbytes // data.shape[0]))
                    out.append(data.tobytes())
    return b"".join(out)


def random_stream(rng: np.random.Generator, n_cells: int, n_layer: int, n_embd: int, seq: int = 0,
                  **kw) -> SynthStream:
    """A stream of n_cells cells of one sequence, with random f16-representable values."""
    k = [rng.standard_normal((n_cells, n_embd)).astype(np.float16).astype(np.float32) for _ in range(n_layer)]
    v = [rng.standard_normal((n_cells, n_embd)).astype(np.float16).astype(np.float32) for _ in range(n_layer)]
    return SynthStream(list(range(n_cells)), [[seq]] * n_cells, k, v, **kw)
