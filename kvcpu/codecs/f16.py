"""f16: the lossless pass-through codec; the payload is llama.cpp's own state bytes."""

from __future__ import annotations

from ..state import KVState
from .base import Codec, CompressedKV, f16_kv_bytes, register


@register
class F16Codec(Codec):
    """Stores the state exactly as llama.cpp wrote it (whatever its cache types)."""

    name = "f16"
    lossless = True

    def encode(self, state: KVState, layout: str = "blocked") -> CompressedKV:
        return CompressedKV(
            codec=self.name, params=self.params, layout="raw",
            meta={"seq_id": state.seq_id, "cell_ext_bytes": state.cell_ext_bytes},
            sections=[state.serialized()], tokens=state.tokens, n_tokens=state.n_tokens,
            f16_kv_bytes=f16_kv_bytes(state),
        )

    def decode(self, packed: CompressedKV, n_tokens: int | None = None) -> KVState:
        state = KVState.from_bytes(packed.sections[0], cell_ext_bytes=packed.meta.get("cell_ext_bytes", 0))
        return state if n_tokens is None or n_tokens >= state.n_tokens else state.head(n_tokens)
