"""The llama.cpp engine: load a GGUF model, tokenize, eval, and get and set sequence state.

This is the only module that imports llama_cpp.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from . import buffers, models
from .errors import EngineError, ModelNotSupportedError
from .ggml_types import ggml_type
from .state import KVState

log = logging.getLogger(__name__)

_U8P = ctypes.POINTER(ctypes.c_uint8)


def default_threads() -> int:
    """llama.cpp's threads when none are asked for: the physical cores. llama-cpp-python's own
    default generates on half the logical CPUs, which on a 2-core machine left a core idle and
    a token 1.6x slower (15 against 25 ms at 1,800 tokens of context)."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


@dataclass(frozen=True)
class EngineConfig:
    """How llama.cpp runs the model. type_k/type_v take a ggml type name ('q8_0') or id."""

    n_ctx: int = 4096
    n_threads: int | None = None  # generation and prefill; None: the physical cores (default_threads)
    n_batch: int = 512
    flash_attn: bool = False
    type_k: str | int | None = None
    type_v: str | int | None = None
    logits_all: bool = False
    verbose: bool = False


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


@dataclass(frozen=True)
class SamplingConfig:
    """Token sampling: temperature 0 is greedy and deterministic. repeat_penalty > 1 divides the
    logits of tokens seen in the last repeat_last_n (llama.cpp's rule), which keeps small models
    out of loops."""

    temperature: float = 0.0
    top_p: float = 0.95
    seed: int | None = None
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64


class Engine:
    """One llama.cpp model and context, with sequence 0 tracked for generation."""

    def __init__(self, llama, info: ModelInfo, config: EngineConfig):
        self.llama = llama
        self.info = info
        self.config = config
        self._has_logits = False  # llama.cpp holds logits only after an eval, not after a restore

    @classmethod
    def load(cls, model: str | os.PathLike = models.DEFAULT_MODEL, *, n_ctx: int = 4096,
             n_threads: int | None = None, flash_attn: bool = False, type_k=None, type_v=None,
             logits_all: bool = False, verbose: bool = False, progress: bool = False) -> Engine:
        """Load a registry name or a .gguf path (fetching a registry model on first use)."""
        config = EngineConfig(n_ctx=n_ctx, n_threads=n_threads, flash_attn=flash_attn, type_k=type_k,
                              type_v=type_v, logits_all=logits_all, verbose=verbose)
        return cls.from_config(model, config, progress=progress)

    @classmethod
    def from_config(cls, model, config: EngineConfig, progress: bool = False) -> Engine:
        import llama_cpp

        path = models.resolve(model, progress=progress)
        threads = config.n_threads or default_threads()
        kwargs = dict(model_path=str(path), n_ctx=config.n_ctx, n_batch=min(config.n_batch, config.n_ctx),
                      n_threads=threads, n_threads_batch=threads, flash_attn=config.flash_attn,
                      logits_all=config.logits_all, verbose=config.verbose)
        for key in ("type_k", "type_v"):
            value = getattr(config, key)
            if value is not None:
                kwargs[key] = ggml_type(value).id
        _route_llama_logs()
        _check_cache_types(path, config)
        _recent_errors.clear()
        try:
            llama = llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError) as exc:
            said = "; ".join(_recent_errors)  # llama.cpp's own reason, which its exception omits
            raise EngineError(f"llama.cpp could not load {path}: {said or exc}") from exc
        refusal = _unsupported_memory(llama)
        if refusal:
            llama.close()
            raise ModelNotSupportedError(f"{path.name}: {refusal}")
        return cls(llama, _model_info(llama, path), config)

    # -- tokens -------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llama.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def token_bytes(self, tokens: Sequence[int]) -> bytes:
        """Raw bytes of tokens; a streamed character may span two tokens."""
        return self.llama.detokenize(list(tokens))

    def is_eog(self, token: int) -> bool:
        """Whether a token ends generation (EOS, <|im_end|> and the like)."""
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llama._model.vocab, token))

    @property
    def chat_template(self) -> str | None:
        """The GGUF's Jinja chat template, if it ships one."""
        return self.llama.metadata.get("tokenizer.chat_template")

    def special_text(self, which: str) -> str:
        """The text of the 'bos' or 'eos' token, for chat templates."""
        model = self.llama._model
        token = model.token_bos() if which == "bos" else model.token_eos()
        return model.token_get_text(token) if token >= 0 else ""

    @property
    def n_past(self) -> int:
        """Tokens held in sequence 0 of the KV cache."""
        return self.llama.n_tokens

    @property
    def tokens(self) -> list[int]:
        return self.llama.input_ids[: self.llama.n_tokens].tolist()

    # -- evaluation ---------------------------------------------------------

    def reset(self) -> None:
        """Empty the KV cache."""
        self.llama.reset()
        self._memory_seq_rm(-1, 0, -1)
        self._has_logits = False

    def eval(self, tokens: Sequence[int]) -> np.ndarray | None:
        """Append tokens to sequence 0; with logits_all, returns their (len(tokens), n_vocab) logits."""
        tokens = list(tokens)
        if self.n_past + len(tokens) > self.config.n_ctx:
            raise EngineError(f"{self.n_past} + {len(tokens)} tokens exceed n_ctx={self.config.n_ctx}")
        start = self.n_past
        try:
            self.llama.eval(tokens)
        except RuntimeError as exc:
            raise EngineError(f"llama.cpp eval failed: {exc}") from exc
        self._has_logits = bool(tokens) or self._has_logits
        if self.config.logits_all:
            return self.llama.scores[start : start + len(tokens)].copy()
        return None

    def last_logits(self) -> np.ndarray:
        """(n_vocab,) logits after the last evaluated token."""
        import llama_cpp

        if not self._has_logits:
            self._reeval_last()
        ptr = llama_cpp.llama_get_logits_ith(self.llama.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.info.n_vocab,)).copy()

    def _reeval_last(self) -> None:
        """After a restore there are no logits: drop the last cell and evaluate its token again."""
        if self.n_past == 0:
            raise EngineError("no logits: nothing has been evaluated")
        last = int(self.llama.input_ids[self.n_past - 1])
        self._memory_seq_rm(0, self.n_past - 1, -1)
        self.llama.n_tokens -= 1
        self.eval([last])

    def sample(self, sampling: SamplingConfig, rng: np.random.Generator) -> int:
        """Pick the next token from the last logits: argmax, or nucleus sampling at a temperature."""
        logits = self.last_logits()
        if sampling.repeat_penalty != 1.0 and sampling.repeat_last_n > 0:
            seen = np.unique(self.llama.input_ids[max(0, self.n_past - sampling.repeat_last_n) : self.n_past])
            picked = logits[seen]
            logits[seen] = np.where(picked > 0, picked / sampling.repeat_penalty, picked * sampling.repeat_penalty)
        if sampling.temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / sampling.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(p)[::-1]
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), sampling.top_p)) + 1]
        return int(rng.choice(keep, p=p[keep] / p[keep].sum()))

    def generate(self, max_tokens: int, sampling: SamplingConfig = SamplingConfig()) -> Iterator[int]:
        """Yield up to max_tokens new tokens after the current state, stopping at end-of-generation.

        A token is yielded as soon as it is sampled and evaluated when the next one is asked for,
        or when the generator ends or is closed: the caller sees it a decode step sooner (the
        first token of a turn, most of all), and the engine still ends up holding every token
        it yielded."""
        if self.n_past == 0:
            raise EngineError("generate needs at least one evaluated token")
        rng = np.random.default_rng(sampling.seed)
        pending = None
        try:
            for _ in range(max_tokens):
                if pending is not None:
                    self.eval([pending])
                    pending = None
                if self.n_past >= self.config.n_ctx:
                    return
                token = self.sample(sampling, rng)
                if self.is_eog(token):
                    return
                pending = token
                yield token
        finally:
            if pending is not None:  # there was room for it: n_past < n_ctx when it was sampled
                self.eval([pending])

    # -- state --------------------------------------------------------------

    def get_state(self, seq_id: int = 0) -> KVState:
        """The sequence's KV state, parsed; sequence 0 carries its token ids."""
        import llama_cpp

        size = llama_cpp.llama_state_seq_get_size(self.llama.ctx, seq_id)
        buf = buffers.POOL.take(size)  # a touched buffer: a fresh one page-faults for every page
        written = llama_cpp.llama_state_seq_get_data(self.llama.ctx, buf.ctypes.data_as(_U8P), size, seq_id)
        if written != size:
            raise EngineError(f"llama_state_seq_get_data wrote {written} of {size} bytes")
        state = KVState.from_bytes(buf)
        state.head_dim = self.info.head_dim
        if seq_id == 0:
            state.tokens = np.asarray(self.tokens, dtype=np.int32)
        return state

    def set_state(self, state: KVState, seq_id: int = 0, tokens: Sequence[int] | None = None) -> None:
        """Replace the sequence's KV cache with `state`, keeping generation bookkeeping in step."""
        import llama_cpp

        tokens = state.tokens if tokens is None else np.asarray(tokens, dtype=np.int32)
        if seq_id == 0:
            if tokens is None:
                raise EngineError("the state carries no token ids; pass tokens= to set_state")
            if len(tokens) != state.n_positions:
                raise EngineError(f"{len(tokens)} token ids for a state spanning {state.n_positions} positions")
        if state.n_positions > self.config.n_ctx:
            raise EngineError(f"state of {state.n_positions} positions does not fit n_ctx={self.config.n_ctx}")
        data = state.serialized()  # the bytes a decode or a get_state wrote: no copy here
        self._memory_seq_rm(seq_id, -1, -1)
        if seq_id == 0:
            self.llama.n_tokens = 0
        read = llama_cpp.llama_state_seq_set_data(self.llama.ctx, data.ctypes.data_as(_U8P), len(data), seq_id)
        if read != len(data):
            self._memory_seq_rm(seq_id, -1, -1)
            raise EngineError(f"llama.cpp refused the state ({read} of {len(data)} bytes read)")
        if seq_id == 0:
            self.llama.input_ids[: len(tokens)] = tokens
            self.llama.n_tokens = len(tokens)
        self._has_logits = False

    def warm_up(self) -> KVState:
        """Pay a first turn's one-time costs now: llama.cpp's first eval (its compute buffers
        and threads), and the first touch of every page of the KV cache (cleared with its
        data). Leaves the cache empty; returns the one-token state it made, for warming codecs."""
        import llama_cpp

        self.reset()
        bos = self.llama._model.token_bos()
        bos = bos if bos >= 0 else 0
        # A batch as long as a turn's message, not one token: llama.cpp's compute buffers are
        # touched as far as a batch reaches, and a first message of a dozen tokens paid the rest
        # (the turn suite's cold prefill ran about 40 ms slower than a warm one).
        self.eval([bos] + self.tokenize(" the" * (WARM_UP_BATCH - 1), add_bos=False)[: WARM_UP_BATCH - 1])
        self.truncate(1)
        state = self.get_state()
        self.set_state(state)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llama.ctx), True)
        self.reset()
        return state

    def truncate(self, n: int) -> None:
        """Keep only the first n tokens of sequence 0."""
        if n <= 0:
            self.reset()
        elif n < self.n_past:
            self.shift_context(n, self.n_past - n)

    def shift_context(self, keep: int, n_drop: int) -> None:
        """Drop tokens keep..keep+n_drop of sequence 0 and shift the rest down (llama.cpp
        re-rotates their keys), as StreamingLLM keeps its attention sinks and a recent window."""
        import llama_cpp

        if not 0 <= keep and 0 < n_drop <= self.n_past - keep:
            raise EngineError(f"cannot drop {n_drop} tokens after {keep} of {self.n_past}")
        tokens = self.tokens
        mem = llama_cpp.llama_get_memory(self.llama.ctx)
        if not llama_cpp.llama_memory_seq_rm(mem, 0, keep, keep + n_drop):
            raise EngineError("llama.cpp could not remove tokens from this cache")
        llama_cpp.llama_memory_seq_add(mem, 0, keep + n_drop, -1, -n_drop)
        kept = tokens[:keep] + tokens[keep + n_drop :]
        self.llama.input_ids[: len(kept)] = kept
        self.llama.n_tokens = len(kept)
        self._has_logits = False

    def _memory_seq_rm(self, seq_id: int, p0: int, p1: int) -> None:
        import llama_cpp

        mem = llama_cpp.llama_get_memory(self.llama.ctx)
        llama_cpp.llama_memory_seq_rm(mem, seq_id, p0, p1)

    def close(self) -> None:
        self.llama.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def llama_system_info() -> str:
    """What llama.cpp was built with and finds on this CPU (its own SIMD report)."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode(errors="replace").strip()


def llama_versions() -> dict:
    """Versions of llama-cpp-python, of the llama.cpp it bundles, and of its sequence-state format."""
    import llama_cpp

    return {"llama_cpp_python": llama_cpp.__version__,
            "llama_cpp": llama_cpp.llama_version().decode(errors="replace"),
            "state_seq_version": int(llama_cpp.LLAMA_STATE_SEQ_VERSION)}


def plain_llama(model_path: str | os.PathLike, n_ctx: int):
    """A bare llama_cpp.Llama, as a user without kvcpu would run it: the benchmarks' baseline."""
    import llama_cpp

    return llama_cpp.Llama(model_path=str(model_path), n_ctx=n_ctx, verbose=False)


def llama_ram_cache(capacity_bytes: int):
    """llama-cpp-python's own LlamaRAMCache: the baseline kvcpu's store is measured against."""
    import llama_cpp

    return llama_cpp.LlamaRAMCache(capacity_bytes=capacity_bytes)


_llama_log = logging.getLogger("kvcpu.llama_cpp")
# ggml's log levels in the llama.cpp that llama-cpp-python 0.3.36 bundles: 1 debug, 2 info, 3 warn,
# 4 error, 5 continues the last. llama-cpp-python's own table is an older ggml's: it printed
# warnings (an SWA cache's size, for every Gemma load) and hid errors (why a model failed to load).
# Warnings and information go to the log at debug and info; errors at error, and into EngineError.
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.ERROR}
_recent_errors: list[str] = []
_log_callback = None  # kept referenced: llama.cpp holds a pointer to it


def _route_llama_logs() -> None:
    """llama.cpp's log into Python's logging, at its true levels, once per process."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    last = [logging.DEBUG]

    @llama_cpp.llama_log_callback
    def callback(level, text, user_data):
        try:  # nothing may escape into C
            message = text.decode("utf-8", errors="replace").strip()
            level = last[0] if level == 5 else _LOG_LEVELS.get(level, logging.DEBUG)
            last[0] = level
            if level >= logging.ERROR and message:
                del _recent_errors[:-3]
                _recent_errors.append(message)
            if message:
                _llama_log.log(level, "%s", message)
        except Exception:
            pass

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    _log_callback = callback


def _check_cache_types(path: Path, config: EngineConfig) -> None:
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


WARM_UP_BATCH = 32  # tokens evaluated at once by Engine.warm_up

# llama.cpp's rope types whose cells carry more than one position (its enum llama_rope_type):
# M-RoPE, interleaved M-RoPE and vision.
_MULTI_AXIS_ROPE = (8, 40, 24)


def _unsupported_memory(llama) -> str:
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


def _model_info(llama, path: Path) -> ModelInfo:
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
