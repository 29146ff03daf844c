"""The llama.cpp engine: load a GGUF model, tokenize, eval, and get and set sequence state."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import psutil

from .. import buffers, models
from ..errors import EngineError, ModelNotSupportedError
from ..ggml_types import ggml_type
from ..sampling import Sampler, SamplingConfig
from ..state import KVState
from .admission import ModelInfo, check_cache_types, model_info, unsupported_memory
from .logs import recent_errors, route_llama_logs

log = logging.getLogger(__name__)

_U8P = ctypes.POINTER(ctypes.c_uint8)
WARM_UP_BATCH = 32  # tokens evaluated at once by Engine.warm_up


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
        route_llama_logs()
        check_cache_types(path, config)
        recent_errors.clear()
        try:
            llama = llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError) as exc:
            said = "; ".join(recent_errors)  # llama.cpp's own reason, which its exception omits
            raise EngineError(f"llama.cpp could not load {path}: {said or exc}") from exc
        refusal = unsupported_memory(llama)
        if refusal:
            llama.close()
            raise ModelNotSupportedError(f"{path.name}: {refusal}")
        return cls(llama, model_info(llama, path), config)

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

    def starts_with_special(self, text: str) -> bool:
        """Whether `text` begins with a special token the tokenizer splits text at (control or
        user-defined, not one that strips the whitespace before it): then the tokens of a text
        that ends where `text` begins do not depend on what follows."""
        import llama_cpp

        first = self.tokenize(text[:64], add_bos=False) if text else []
        if not first:
            return False
        attr = llama_cpp.llama_vocab_get_attr(self.llama._model.vocab, first[0])
        splits = attr & (llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED)
        return bool(splits) and not attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP and \
            text.startswith(self.llama._model.token_get_text(first[0]))

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

    def sample(self, sampling: SamplingConfig | Sampler, rng: np.random.Generator | None = None) -> int:
        """Pick the next token from the last logits (kvcpu.sampling: argmax, or sampling at a
        temperature; with a Sampler's grammar, only what it allows)."""
        sampler = sampling if isinstance(sampling, Sampler) else Sampler(sampling)
        if rng is not None:
            sampler.rng = rng
        window = sampler.config.repeat_last_n
        return sampler.pick(self.last_logits(), self.llama.input_ids[max(0, self.n_past - window) : self.n_past])

    def generate(self, max_tokens: int, sampling: SamplingConfig | Sampler | None = None) -> Iterator[int]:
        """Yield up to max_tokens new tokens after the current state, stopping at end-of-generation.

        A token is yielded as soon as it is sampled and evaluated when the next one is asked for,
        or when the generator ends or is closed: the caller sees it a decode step sooner (the
        first token of a turn, most of all), and the engine still ends up holding every token
        it yielded."""
        if self.n_past == 0:
            raise EngineError("generate needs at least one evaluated token")
        sampler = sampling if isinstance(sampling, Sampler) else Sampler(sampling or SamplingConfig())
        pending = None
        try:
            for _ in range(max_tokens):
                if pending is not None:
                    self.eval([pending])
                    pending = None
                if self.n_past >= self.config.n_ctx:
                    return
                token = self.sample(sampler)
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
