"""The ggml tensor types that llama.cpp's KV cache can hold, and their sizes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GGMLType:
    """One ggml type: its id in the state bytes, and how rows of it are laid out."""

    id: int
    name: str
    block_size: int  # values per block (1 for plain float types)
    type_size: int  # bytes per block
    numeric: bool  # kvcpu exposes its values as float arrays

    def row_bytes(self, n_values: int) -> int:
        """Bytes of one row of n_values (ggml_row_size)."""
        return n_values // self.block_size * self.type_size


# ids from ggml.h (enum ggml_type); only the types llama.cpp accepts for the KV cache.
_TYPES = [
    GGMLType(0, "f32", 1, 4, True),
    GGMLType(1, "f16", 1, 2, True),
    GGMLType(2, "q4_0", 32, 18, False),
    GGMLType(3, "q4_1", 32, 20, False),
    GGMLType(6, "q5_0", 32, 22, False),
    GGMLType(7, "q5_1", 32, 24, False),
    GGMLType(8, "q8_0", 32, 34, False),
    GGMLType(20, "iq4_nl", 32, 18, False),
    GGMLType(30, "bf16", 1, 2, True),
]
BY_ID = {t.id: t for t in _TYPES}
BY_NAME = {t.name: t for t in _TYPES}

F32, F16, BF16 = BY_NAME["f32"], BY_NAME["f16"], BY_NAME["bf16"]

# How each numeric type's rows are stored in a NumPy array (bf16 as its raw 16 bits).
STORAGE_DTYPE = {F32.id: np.dtype("<f4"), F16.id: np.dtype("<f2"), BF16.id: np.dtype("<u2")}


def ggml_type(key: int | str) -> GGMLType:
    """Look a type up by id or name; KeyError names what is known."""
    table = BY_ID if isinstance(key, int) else BY_NAME
    try:
        return table[key]
    except KeyError:
        known = ", ".join(t.name for t in _TYPES)
        raise KeyError(f"unknown ggml KV type {key!r} (known: {known})") from None
