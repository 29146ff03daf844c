"""Which models and cache types the engine admits, read from a model's metadata before and
after llama.cpp loads it: what kvcpu refuses, and why, and the shape of what it keeps."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

from .. import models
from ..errors import EngineError
from ..ggml_types import ggml_type


@dataclass(frozen=True)
class ModelInfo:
    """What the model is: its shape and an identity that snapshots are checked against."""

    arch: str
    n_layer: int
    n_head_kv: int
    head_dim: int
    n_ctx_train: int
    n_vocab: int
    path: str
    fingerprint: str

    @property
    def kv_bytes_per_token_f16(self) -> int:
        return 2 * self.n_layer * self.n_head_kv * self.head_dim * 2


def check_cache_types(path: Path, config) -> None:
    """Refuse a block-quantized cache type whose blocks do not divide the head size: llama.cpp
    would abort the whole process while creating the context. Reads the model's metadata only
    (llama.cpp's vocab-only load), and only when such a type is asked for."""
    import llama_cpp

    asked = {key: ggml_type(getattr(config, key)) for key in ("type_k", "type_v") if getattr(config, key) is not None}
    if all(t.block_size == 1 for t in asked.values()):
        return
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise EngineError(f"llama.cpp could not read the metadata of {path}")
    try:
        arch = _meta_str(model, "general.architecture")
        head_dim = _head_dim(lambda key, default=0: int(_meta_str(model, f"{arch}.{key}") or default))
    finally:
        llama_cpp.llama_model_free(model)
    for key, t in asked.items():
        if head_dim and head_dim % t.block_size:
            raise EngineError(f"{key}={t.name} packs {t.block_size} values a block, which does not divide this "
                              f"model's head size of {head_dim}; use f16 or a type that fits")


def _meta_str(model, key: str) -> str | None:
    import llama_cpp

    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode("utf-8", errors="replace") if n >= 0 else None


# llama.cpp's rope types whose cells carry more than one position (its enum llama_rope_type):
# M-RoPE, interleaved M-RoPE and vision.
_MULTI_AXIS_ROPE = (8, 40, 24)


def unsupported_memory(llama) -> str:
    """Why kvcpu cannot keep this model's memory as a KV snapshot, or "" when it can."""
    import llama_cpp

    arch = llama.metadata.get("general.architecture", "unknown")
    model = llama.model
    if llama_cpp.llama_model_is_recurrent(model):
        return (f"architecture {arch!r} is recurrent: its memory is a fixed-size state per sequence, not a KV "
                "cache of one entry per token, and kvcpu keeps only KV caches")
    if llama_cpp.llama_model_is_hybrid(model):
        return (f"architecture {arch!r} is hybrid: its memory mixes recurrent layers with a KV cache, and kvcpu "
                "keeps only KV caches")
    if llama_cpp.llama_model_rope_type(model) in _MULTI_AXIS_ROPE:
        return (f"architecture {arch!r} uses multi-axis RoPE (M-RoPE): its cells carry extra positions that "
                "kvcpu's state parser does not interpret")
    return ""


def _head_dim(num) -> int:
    """The model's head size from its metadata (num(key, default) reads '{arch}.key' as int)."""
    return num("attention.key_length") or num("embedding_length") // max(num("attention.head_count", 1), 1)


def model_info(llama, path: Path) -> ModelInfo:
    meta = llama.metadata
    arch = meta.get("general.architecture", "unknown")

    def num(key: str, default: int = 0) -> int:
        return int(meta.get(f"{arch}.{key}", default))

    n_head = num("attention.head_count", 1)
    return ModelInfo(
        arch=arch, n_layer=num("block_count"), n_head_kv=num("attention.head_count_kv", n_head),
        head_dim=_head_dim(num), n_ctx_train=num("context_length"), n_vocab=llama.n_vocab(),
        path=str(path), fingerprint=models.fingerprint(path),
    )
