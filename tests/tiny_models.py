"""Tiny GGUF models of the architectures people run, for the architecture matrix (`-m arch`).

Each file has its family's architecture metadata, tensor names and shapes (GQA ratio, head
size, sliding-window layers, QK-norm, softcapping, post-norms, fused up-projections), small
random weights drawn from a seed, and SmolLM2's real tokenizer and chat template, copied from
its GGUF. llama.cpp loads them like the real thing and keeps a KV cache of exactly the family's
layout; their answers are noise, which the tests do not read. Which tensors each family needs
follows llama.cpp's loaders (src/models/*.cpp of the pinned version).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

N_LAYER = 4
N_FF = 96
N_CTX_TRAIN = 4096
SEED = 20261202


@dataclass(frozen=True)
class TinySpec:
    """One row of the matrix: a family, its GGUF architecture and its distinctive shape."""

    name: str
    arch: str
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    # what the family's layers carry besides q, k, v, output and the feed-forward
    qk_norm: str = ""  # "head": per-head q/k norms; "full": over all of q and k (OLMo 2)
    post_norms: bool = False  # norms after attention and feed-forward (Gemma 2/3, OLMo 2)
    pre_norms: bool = True  # norms before attention and feed-forward (all but OLMo 2)
    fused_up: bool = False  # gate and up in one tensor (Phi-3)
    output: str = "tied"  # "tied": no output tensor; "own": its own (required by OLMo 2)
    metadata: dict = field(default_factory=dict)  # keys after "{arch}."
    recurrent: bool = False  # Mamba's layers instead of attention
    refusal: str = ""  # what kvcpu's refusal at load says, for a model it must refuse
    what: str = ""


MATRIX = [
    TinySpec("llama", "llama", 128, 4, 1, 64, what="Llama 3.x: GQA 4:1, head 64"),
    TinySpec("mistral", "llama", 128, 4, 1, 128, metadata={"attention.sliding_window": 64},
             what="Mistral 7B: the llama architecture, head 128; llama.cpp ignores its sliding window"),
    TinySpec("qwen2", "qwen2", 128, 2, 1, 64, what="Qwen 2.5: GQA 2:1, head 64"),
    TinySpec("qwen3", "qwen3", 128, 2, 1, 128, qk_norm="head", what="Qwen 3: QK-norm, head 128"),
    TinySpec("gemma2", "gemma2", 128, 2, 1, 256, post_norms=True,
             metadata={"attention.sliding_window": 32, "attn_logit_softcapping": 50.0,
                       "final_logit_softcapping": 30.0},
             what="Gemma 2: sliding-window layers in a second cache (every other layer), softcapping, head 256"),
    TinySpec("gemma3", "gemma3", 128, 2, 1, 256, qk_norm="head", post_norms=True,
             metadata={"attention.sliding_window": 32, "attention.sliding_window_pattern": 2,
                       "rope.freq_base_swa": 10000.0},
             what="Gemma 3: iSWA (two caches), QK-norm, one KV head of 256"),
    TinySpec("phi3", "phi3", 192, 2, 2, 96, fused_up=True, what="Phi-3/3.5: head 96, no GQA, fused gate and up"),
    TinySpec("granite", "granite", 160, 2, 1, 80,
             metadata={"logit_scale": 8.0, "residual_scale": 0.22, "embedding_scale": 12.0,
                       "attention.scale": 0.0125},
             what="Granite 3: scaled logits, residuals and embeddings, head 80"),
    TinySpec("olmo2", "olmo2", 128, 2, 2, 64, qk_norm="full", post_norms=True, pre_norms=False, output="own",
             what="OLMo 2: post-norms only, QK-norm over the whole of q and k"),
    TinySpec("mamba", "mamba", 64, 1, 1, 64, recurrent=True, refusal="'mamba' is recurrent",
             what="Mamba: a recurrent state, no KV cache"),
    TinySpec("qwen2vl", "qwen2vl", 128, 2, 1, 64, metadata={"rope.dimension_sections": [16, 8, 8, 0]},
             refusal="'qwen2vl' uses multi-axis RoPE", what="Qwen2-VL: M-RoPE, several positions per cell"),
]
BY_NAME = {s.name: s for s in MATRIX}


def _tensor_name(kind: gguf.MODEL_TENSOR, layer: int | None = None, suffix: str = "weight") -> str:
    name = gguf.TENSOR_NAMES[kind].format(bid=layer)
    return f"{name}.{suffix}" if suffix else name


class _Weights:
    """Random weights from one seed: matrices as f16 (the vocabulary's as Q8_0), norms as ones."""

    def __init__(self, writer: gguf.GGUFWriter, seed: int):
        self.writer, self.rng = writer, np.random.default_rng(seed)

    def matrix(self, name: str, rows: int, cols: int, quantized: bool = False) -> None:
        """A (rows, cols) weight, llama.cpp's {cols, rows}."""
        w = (self.rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        if quantized:
            q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
            self.writer.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            self.writer.add_tensor(name, w.astype(np.float16))

    def vector(self, name: str, n: int, value: float = 1.0) -> None:
        self.writer.add_tensor(name, np.full(n, value, np.float32))


_TOKENIZERS: dict[Path, list] = {}


def _tokenizer_fields(source: Path) -> list[tuple]:
    """(key, value, type, sub_type) of every tokenizer.* key of the source GGUF, its chat
    template included; read once per source."""
    if source not in _TOKENIZERS:
        fields = []
        for key, f in gguf.GGUFReader(source).fields.items():
            if not key.startswith("tokenizer."):
                continue
            vtype = f.types[0]
            if vtype == gguf.GGUFValueType.ARRAY:
                sub = f.types[1]
                values = [bytes(f.parts[i]).decode("utf-8") for i in f.data] if sub == gguf.GGUFValueType.STRING \
                    else [f.parts[i].tolist()[0] for i in f.data]
                fields.append((key, values, vtype, sub))
            else:
                fields.append((key, f.contents(), vtype, None))
        _TOKENIZERS[source] = fields
    return _TOKENIZERS[source]


def _copy_tokenizer(writer: gguf.GGUFWriter, source: Path) -> int:
    """The source's tokenizer, into writer; returns the vocabulary size."""
    n_vocab = 0
    for key, value, vtype, sub in _tokenizer_fields(source):
        writer.add_key_value(key, value, vtype, sub)
        if key == "tokenizer.ggml.tokens":
            n_vocab = len(value)
    return n_vocab


def _add_metadata(writer: gguf.GGUFWriter, spec: TinySpec) -> None:
    a = spec.arch
    writer.add_uint32(f"{a}.block_count", N_LAYER)
    writer.add_uint32(f"{a}.context_length", N_CTX_TRAIN)
    writer.add_uint32(f"{a}.embedding_length", spec.n_embd)
    writer.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    if spec.recurrent:
        writer.add_uint32(f"{a}.feed_forward_length", 0)
        writer.add_uint32(f"{a}.attention.head_count", 0)
        for key, value in (("ssm.conv_kernel", 4), ("ssm.inner_size", 2 * spec.n_embd), ("ssm.state_size", 16),
                           ("ssm.time_step_rank", 8)):
            writer.add_uint32(f"{a}.{key}", value)
        return
    writer.add_uint32(f"{a}.feed_forward_length", N_FF)
    writer.add_uint32(f"{a}.attention.head_count", spec.n_head)
    writer.add_uint32(f"{a}.attention.head_count_kv", spec.n_head_kv)
    writer.add_uint32(f"{a}.attention.key_length", spec.head_dim)
    writer.add_uint32(f"{a}.attention.value_length", spec.head_dim)
    writer.add_uint32(f"{a}.rope.dimension_count", spec.head_dim)
    writer.add_float32(f"{a}.rope.freq_base", 10000.0)
    for key, value in spec.metadata.items():
        if isinstance(value, list):
            writer.add_array(f"{a}.{key}", value)
        else:
            (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(f"{a}.{key}", value)


def _add_attention_layer(w: _Weights, spec: TinySpec, i: int) -> None:
    T = gguf.MODEL_TENSOR
    q, kv = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    if spec.pre_norms:
        w.vector(_tensor_name(T.ATTN_NORM, i), spec.n_embd)
        w.vector(_tensor_name(T.FFN_NORM, i), spec.n_embd)
    w.matrix(_tensor_name(T.ATTN_Q, i), q, spec.n_embd)
    w.matrix(_tensor_name(T.ATTN_K, i), kv, spec.n_embd)
    w.matrix(_tensor_name(T.ATTN_V, i), kv, spec.n_embd)
    w.matrix(_tensor_name(T.ATTN_OUT, i), spec.n_embd, q)
    if spec.qk_norm:
        w.vector(_tensor_name(T.ATTN_Q_NORM, i), spec.head_dim if spec.qk_norm == "head" else q)
        w.vector(_tensor_name(T.ATTN_K_NORM, i), spec.head_dim if spec.qk_norm == "head" else kv)
    if spec.post_norms:
        w.vector(_tensor_name(T.ATTN_POST_NORM, i), spec.n_embd)
        w.vector(_tensor_name(T.FFN_POST_NORM, i), spec.n_embd)
    if spec.fused_up:
        w.matrix(_tensor_name(T.FFN_UP, i), 2 * N_FF, spec.n_embd)
    else:
        w.matrix(_tensor_name(T.FFN_GATE, i), N_FF, spec.n_embd)
        w.matrix(_tensor_name(T.FFN_UP, i), N_FF, spec.n_embd)
    w.matrix(_tensor_name(T.FFN_DOWN, i), spec.n_embd, N_FF)


def _add_mamba_layer(w: _Weights, spec: TinySpec, i: int) -> None:
    T = gguf.MODEL_TENSOR
    d_inner, d_state, dt_rank, d_conv = 2 * spec.n_embd, 16, 8, 4
    w.vector(_tensor_name(T.ATTN_NORM, i), spec.n_embd)
    w.matrix(_tensor_name(T.SSM_IN, i), 2 * d_inner, spec.n_embd)
    w.writer.add_tensor(_tensor_name(T.SSM_CONV1D, i), (w.rng.standard_normal((d_inner, d_conv)) * 0.05)
                        .astype(np.float32))  # llama.cpp's ssm_conv reads f32 only
    w.vector(_tensor_name(T.SSM_CONV1D, i, "bias"), d_inner, 0.0)
    w.matrix(_tensor_name(T.SSM_X, i), dt_rank + 2 * d_state, d_inner)
    w.matrix(_tensor_name(T.SSM_DT, i), d_inner, dt_rank)
    w.vector(_tensor_name(T.SSM_DT, i, "bias"), d_inner, 0.0)
    w.writer.add_tensor(_tensor_name(T.SSM_A, i, ""), -np.ones((d_inner, d_state), np.float32))
    w.vector(_tensor_name(T.SSM_D, i, ""), d_inner)
    w.matrix(_tensor_name(T.SSM_OUT, i), spec.n_embd, d_inner)


def write(spec: TinySpec, tokenizer_source: Path, path: Path, seed: int = SEED) -> Path:
    """Write spec's tiny model to path (deterministic from seed and the tokenizer source)."""
    tmp = path.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), spec.arch)
    writer.add_name("kvcpu tiny model")  # not the family's: llama.cpp tunes some vocabularies by name
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    _add_metadata(writer, spec)
    n_vocab = _copy_tokenizer(writer, tokenizer_source)
    w = _Weights(writer, seed + sum(map(ord, spec.name)))
    T = gguf.MODEL_TENSOR
    w.matrix(_tensor_name(T.TOKEN_EMBD), n_vocab, spec.n_embd, quantized=True)
    w.vector(_tensor_name(T.OUTPUT_NORM), spec.n_embd)
    if spec.output == "own":
        w.matrix(_tensor_name(T.OUTPUT), n_vocab, spec.n_embd, quantized=True)
    for i in range(N_LAYER):
        (_add_mamba_layer if spec.recurrent else _add_attention_layer)(w, spec, i)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def build(folder: Path, tokenizer_source: Path, names=None) -> dict[str, Path]:
    """Every model of the matrix (or those named) in folder, each written once."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for spec in MATRIX:
        if names is not None and spec.name not in names:
            continue
        path = folder / f"tiny-{spec.name}.gguf"
        out[spec.name] = path if path.exists() else write(spec, tokenizer_source, path)
    return out
