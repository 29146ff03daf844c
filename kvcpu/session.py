"""Conversations over one engine and one store: every turn restores what is stored and
prefills only what is new.

A turn: format the conversation with the model's chat template; find the longest stored
prefix of its tokens; decode that snapshot and load it; prefill the rest; generate; encode the
new state and put it into the store. Switching between conversations therefore never
re-prefills what is stored.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jinja2
import numpy as np

from . import buffers, kernels, metrics
from .engine import Engine, EngineConfig, SamplingConfig
from .errors import KVCPUError
from .fileio import atomic_write
from .snapshot import Snapshot
from .store import KVStore
from .store.keys import common_prefix_length

log = logging.getLogger(__name__)

# What a stored entry is worth to cost-aware eviction: the prefill seconds a hit saves, at
# SmolLM2's rate on 2 cores (DESIGN.md); only the ratio between entries matters.
PREFILL_TOKENS_PER_S = 180.0
MAX_PENDING_STORES = 2  # turns' states waiting for the background store, at most

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@functools.lru_cache(maxsize=8)
def chat_template(source: str) -> jinja2.Template:
    """A GGUF chat template (Jinja source), compiled once per distinct source."""
    return jinja2.Environment(loader=jinja2.BaseLoader()).from_string(source)


@dataclass(frozen=True)
class TurnStats:
    """What the last turn cost, and where its time went."""

    tokens_restored: int
    tokens_prefilled: int
    tokens_generated: int
    restore_ms: float  # all of the restore: the parts below, and the lookup
    prefill_ms: float
    ttft_ms: float
    decode_tps: float
    context_shifted: bool
    restore_read_ms: float = 0.0  # the store's read of the snapshot, its checksum included
    restore_decode_ms: float = 0.0
    restore_set_ms: float = 0.0  # llama.cpp's set_state
    waited_ms: float = 0.0  # for the previous turn's store, when this turn needed its state
    save_ms: float = 0.0  # after the reply, before the next message can start: get_state and the record


@dataclass(frozen=True)
class StoreStats:
    """What storing a turn's state took, in the background: encode and put."""

    conversation: str
    tokens: int
    store_ms: float
    snapshot_bytes: int  # what the store keeps for this turn (its own part, when a prefix is shared)


@dataclass
class Conversation:
    """A conversation's messages, and the exact tokens the model has seen of it."""

    id: str
    messages: list[dict] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # the rendered conversation that `tokens` encode

    def to_json(self) -> dict:
        return asdict(self)


class UnknownConversationError(KVCPUError, KeyError):
    """No conversation by that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Session:
    """Many conversations over one model, with their KV state kept in a KVStore."""

    def __init__(self, model="smollm2-135m", *, codec: str = "int8", budget_bytes: int = 512 << 20,
                 disk_dir=None, store: KVStore | None = None, n_ctx: int = 4096, policy: str = "hybrid",
                 keep_first: int = 32, n_threads: int | None = None, progress: bool = False):
        self._owns_engine = not isinstance(model, Engine)  # an engine passed in stays the caller's
        self.engine = model if isinstance(model, Engine) else Engine.from_config(
            model, EngineConfig(n_ctx=n_ctx, n_threads=n_threads), progress=progress)
        self.fingerprint = self.engine.info.fingerprint
        self._owns_store = store is None
        self.store = store if store is not None else KVStore(budget_bytes, policy=policy, disk_dir=disk_dir,
                                                              codec=codec)
        self.codec = codec
        self.keep_first = keep_first
        self.conversations: dict[str, Conversation] = {}
        self.last_turn: TurnStats | None = None
        self.last_store: StoreStats | None = None
        # Each turn's state is encoded and stored by one background thread, in turn order, so
        # that the next message never waits for an encode it does not need. _pending: the
        # jobs not known to be done, as (the tokens each stores, its future).
        self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvcpu-store")
        self._pending: list[tuple[np.ndarray, Future]] = []
        self._pending_lock = threading.Lock()
        self._warming: Future | None = None
        self._template = chat_template(self.engine.chat_template or CHATML)
        self._conv_dir = Path(self.store.disk.root) / "conversations" if self.store.disk is not None else None
        if self._conv_dir is not None:
            self._conv_dir.mkdir(exist_ok=True)
            for path in sorted(self._conv_dir.glob("*.json")):
                self._load_conversation_file(path)

    # -- conversations ---------------------------------------------------------------------------

    def new(self, conversation_id: str) -> Conversation:
        conv = self.conversations.get(conversation_id)
        if conv is None:
            conv = self.conversations[conversation_id] = Conversation(conversation_id)
        return conv

    def get(self, conversation_id: str) -> Conversation:
        try:
            return self.conversations[conversation_id]
        except KeyError:
            raise UnknownConversationError(f"no conversation {conversation_id!r}; known: "
                                           f"{sorted(self.conversations)}") from None

    def forget(self, conversation_id: str) -> None:
        """Drop a conversation and its stored snapshot."""
        conv = self.get(conversation_id)
        self.flush()
        key = self.store.lookup_exact(conv.tokens, self.fingerprint) if conv.tokens else None
        if key is not None:
            self.store.delete(key)
        del self.conversations[conversation_id]
        if self._conv_dir is not None:
            (self._conv_dir / f"{_safe(conversation_id)}.json").unlink(missing_ok=True)

    def list(self) -> list[dict]:
        """One row per conversation: turns, tokens, and where its snapshot is."""
        self.flush()
        where = {e["key"]: e for e in self.store.entries()}
        rows = []
        for conv in self.conversations.values():
            key = self.store.lookup_exact(conv.tokens, self.fingerprint) if conv.tokens else None
            entry = where.get(key) if key else None
            rows.append({"id": conv.id, "turns": sum(m["role"] == "user" for m in conv.messages),
                         "tokens": len(conv.tokens), "snapshot_bytes": (entry or {}).get("ram_bytes") or
                         (entry or {}).get("disk_bytes", 0),
                         "in_ram": bool(entry and entry["in_ram"]), "on_disk": bool(entry and entry["on_disk"])})
        return rows

    # -- a turn ----------------------------------------------------------------------------------

    def chat(self, conversation_id: str, message: str, *, max_tokens: int = 256, temperature: float = 0.0,
             seed: int | None = None, repeat_penalty: float = 1.1, stream: bool = False):
        """The reply to `message`; with stream=True, an iterator of text chunks as they come."""
        if max_tokens < 1:
            raise KVCPUError(f"max_tokens must be at least 1, not {max_tokens}")
        sampling = SamplingConfig(temperature, seed=seed, repeat_penalty=repeat_penalty)
        chunks = self._turn(self.new(conversation_id), message, max_tokens, sampling)
        return chunks if stream else "".join(chunks)

    def _turn(self, conv: Conversation, message: str, max_tokens: int, sampling: SamplingConfig) -> Iterator[str]:
        self._wait_for_warm_up()
        t0 = time.perf_counter()
        messages = conv.messages + [{"role": "user", "content": message}]
        prompt_text = self._render(messages, True)
        prompt = self._extend(conv, prompt_text)
        restored, restore = self._restore(prompt)
        shifted = self._make_room(prompt, restored, max_tokens)
        prompt = self.engine.tokens + prompt[restored:] if shifted else prompt
        base = self.engine.n_past
        t1 = time.perf_counter()
        self.engine.eval(prompt[base:])
        prefill_ms = (time.perf_counter() - t1) * 1e3
        generated, pending, ttft_ms, t2 = [], b"", 0.0, time.perf_counter()
        try:
            for token in self.engine.generate(max_tokens, sampling):
                if not generated:
                    ttft_ms = (time.perf_counter() - t0) * 1e3
                generated.append(token)
                pending += self.engine.token_bytes([token])
                text, pending = _complete_utf8(pending)
                if text:
                    yield text
        finally:  # also when the consumer stops early (Ctrl-C): the turn is kept as far as it got
            decode_s = time.perf_counter() - t2
            reply = self.engine.detokenize(generated)
            save_ms = self._finish(conv, messages, prompt_text, reply)
            self.last_turn = TurnStats(
                tokens_restored=restored, tokens_prefilled=len(prompt) - base, tokens_generated=len(generated),
                prefill_ms=prefill_ms, ttft_ms=ttft_ms or (time.perf_counter() - t0) * 1e3,
                decode_tps=len(generated) / decode_s if decode_s > 0 else 0.0, context_shifted=shifted,
                save_ms=save_ms, **restore)
            log.info("turn %s: restored %d tokens in %.1f ms, prefilled %d in %.0f ms, generated %d",
                     conv.id, restored, restore["restore_ms"], len(prompt) - base, prefill_ms, len(generated))

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self._template.render(messages=messages, add_generation_prompt=generation_prompt,
                                     bos_token=self.engine.special_text("bos"),
                                     eos_token=self.engine.special_text("eos"))

    def _extend(self, conv: Conversation, text: str) -> list[int]:
        """Tokens of `text`: the conversation's own tokens plus the new part, so that what the
        model saw (its generated tokens included) stays the prefix; else tokenized afresh."""
        if conv.tokens and text.startswith(conv.text):
            return conv.tokens + self.engine.tokenize(text[len(conv.text):], add_bos=False)
        return self.engine.tokenize(text)

    def _restore(self, prompt: list[int]) -> tuple[int, dict]:
        """Load the longest stored prefix of the prompt (keeping what the engine already holds
        when that is longer); returns (tokens restored, TurnStats' restore timings)."""
        t0 = time.perf_counter()
        held = self.engine.tokens
        common = common_prefix_length(held, prompt)
        waited_ms = self._wait_if_needed(prompt, common)
        times = {"waited_ms": waited_ms}
        match = self.store.longest_prefix(prompt[:-1], self.fingerprint)  # at least one token to eval
        if match is None or match.n_tokens <= common:
            self.engine.truncate(common)  # what the engine holds already is the longest prefix
            return common, {**times, "restore_ms": (time.perf_counter() - t0) * 1e3}
        try:
            t1 = time.perf_counter()
            snap = self.store.get(match.key)
            t2 = time.perf_counter()
            with kernels.threads(1):  # llama.cpp's threads are still on both cores
                state = snap.decode(self.fingerprint, n_tokens=match.n_tokens)
            t3 = time.perf_counter()
            self.engine.set_state(state)
            t4 = time.perf_counter()
        except KVCPUError as exc:
            log.warning("stored snapshot %s is unusable (%s); prefilling instead", match.key, exc)
            self.engine.reset()
            return 0, {**times, "restore_ms": (time.perf_counter() - t0) * 1e3}
        return match.n_tokens, {**times, "restore_ms": (t4 - t0) * 1e3, "restore_read_ms": (t2 - t1) * 1e3,
                                "restore_decode_ms": (t3 - t2) * 1e3, "restore_set_ms": (t4 - t3) * 1e3}

    def _wait_if_needed(self, prompt: list[int], common: int) -> float:
        """Wait for the background store only when this prompt needs the state it is storing
        (more of it than the engine holds); returns the ms waited."""
        with self._pending_lock:
            self._pending = [p for p in self._pending if not p[1].done()]
            needed = [f for tokens, f in self._pending if common_prefix_length(tokens, prompt) > common]
        if not needed:
            return 0.0  # other conversations' states: this turn goes on while they are stored
        t0 = time.perf_counter()
        _result_of(needed[-1])  # the jobs run in order: the last one needed means all before it
        return (time.perf_counter() - t0) * 1e3

    def _make_room(self, prompt: list[int], restored: int, max_tokens: int) -> bool:
        """When the turn would outgrow n_ctx, drop the middle of what is loaded: keep the first
        tokens (attention sinks, the system prompt) and the most recent ones."""
        n_ctx = self.engine.config.n_ctx
        need = self.engine.n_past + (len(prompt) - restored) + max_tokens - n_ctx
        if need <= 0:
            return False
        keep = min(self.keep_first, self.engine.n_past)
        droppable = self.engine.n_past - keep
        if need > droppable:
            raise KVCPUError(f"the message needs {len(prompt) - restored + max_tokens} tokens, more than "
                             f"n_ctx={n_ctx} leaves; send a shorter message or lower max_tokens")
        n_drop = min(droppable, need + n_ctx // 8)  # a little extra, so the next turns fit too
        self.engine.shift_context(keep, n_drop)
        return True

    def _finish(self, conv, messages, prompt_text, reply) -> float:
        """Close the assistant message, remember the conversation, and hand its new state to
        the background store; returns the ms this took after the closing tokens' eval."""
        messages = messages + [{"role": "assistant", "content": reply}]
        full_text = self._render(messages, False)
        closing = full_text[len(prompt_text) + len(reply):] if full_text.startswith(prompt_text + reply) else ""
        if closing:  # evaluated now, so that the stored state is exactly the conversation so far
            closing_tokens = self.engine.tokenize(closing, add_bos=False)
            if self.engine.n_past + len(closing_tokens) <= self.engine.config.n_ctx:
                self.engine.eval(closing_tokens)
        t0 = time.perf_counter()
        conv.messages, conv.text = messages, full_text if closing else prompt_text + reply
        conv.tokens = self.engine.tokens
        state = self.engine.get_state()  # a copy: the engine goes on, the encode works on this
        with self._pending_lock:
            self._pending = [p for p in self._pending if not p[1].done()]
            oldest = self._pending[0][1] if len(self._pending) >= MAX_PENDING_STORES else None
        if oldest is not None:  # turns come faster than they are stored: hold the states in check
            _result_of(oldest)
        future = self._saver.submit(self._store, conv.id, state)
        with self._pending_lock:
            self._pending.append((state.tokens, future))
        # Written after the state is handed over: a crash before the store lands finds this
        # record's tokens and restores the longest stored prefix of them (the turn before).
        self._save_conversation_file(conv)
        return (time.perf_counter() - t0) * 1e3

    def _store(self, conversation_id: str, state) -> None:
        """The background half of a turn: encode the state and put it into the store."""
        t0 = time.perf_counter()
        kernels.use_threads(1)  # leave the other core to llama.cpp, which may be prefilling
        try:
            snap = Snapshot.from_state(state, self.fingerprint, self.codec, model_name=self.engine.info.path,
                                       meta={"conversation": conversation_id})
            key = self.store.put(snap, cost=len(state.tokens) / PREFILL_TOKENS_PER_S)
            nbytes = self.store.stored_bytes(key)  # put serialized it once already
        except KVCPUError as exc:
            log.warning("could not store the state of %s: %s", conversation_id, exc)
            nbytes = 0
        except Exception:  # a bug must not vanish inside a thread
            log.exception("storing the state of %s failed", conversation_id)
            raise
        self.last_store = StoreStats(conversation_id, len(state.tokens), (time.perf_counter() - t0) * 1e3, nbytes)

    def flush(self) -> None:
        """Wait until every turn's state is in the store."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for _, future in pending:
            _result_of(future)

    def warm_up(self, background: bool = False) -> None:
        """Pay what the first turn after a start would: the engine's first eval and its KV
        pages, the codec's kernels loaded from Numba's cache (encode and decode), and buffers
        for states of this model's context. With background=True it runs on the store's thread
        while the user types, and the first turn waits for it only if it comes sooner."""
        if background:
            self._warming = self._saver.submit(self._warm_up)
        else:
            self._warm_up()

    def _warm_up(self) -> None:
        t0 = time.perf_counter()
        state = self.engine.warm_up()
        largest = max((e["tokens"] for e in self.store.entries()), default=0)
        # Buffers for the biggest stored state, touched now: a restore and a save at once.
        buffers.POOL.reserve(largest * self.engine.info.kv_bytes_per_token_f16 + (1 << 20), count=2)
        with kernels.threads(1):  # as _restore and _store run them
            packed = Snapshot.from_state(state, self.fingerprint, self.codec).packed
            packed.decode()
            packed.decode(n_tokens=1)
        log.info("warmed up in %.0f ms", (time.perf_counter() - t0) * 1e3)

    def _wait_for_warm_up(self) -> None:
        warming, self._warming = self._warming, None
        if warming is not None:
            warming.result()

    # -- persistence -----------------------------------------------------------------------------

    def _save_conversation_file(self, conv: Conversation) -> None:
        if self._conv_dir is not None:
            atomic_write(self._conv_dir / f"{_safe(conv.id)}.json", json.dumps(conv.to_json()).encode())

    def _load_conversation_file(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            conv = Conversation(str(data["id"]), list(data["messages"]), [int(t) for t in data["tokens"]],
                                str(data["text"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping unreadable conversation file %s: %s", path, exc)
            return
        self.conversations[conv.id] = conv

    def save_conversation(self, conversation_id: str, path: str | os.PathLike) -> int:
        """One file with the conversation's messages and its snapshot; resumable elsewhere."""
        conv = self.get(conversation_id)
        self.flush()
        key = self.store.lookup_exact(conv.tokens, self.fingerprint) if conv.tokens else None
        if key is None:
            raise KVCPUError(f"conversation {conversation_id!r} has no stored state to save")
        snap = self.store.get(key)
        snap.meta = {**snap.meta, "conversation": conv.to_json()}
        return snap.save(path)

    def load_conversation(self, path: str | os.PathLike) -> str:
        """Load a file from save_conversation (of this same model); returns the conversation id."""
        snap = Snapshot.load(path, expect_fingerprint=self.fingerprint)
        data = snap.meta.get("conversation")
        if not isinstance(data, dict):
            raise KVCPUError(f"{path} is a snapshot but holds no conversation")
        conv = Conversation(str(data["id"]), list(data["messages"]), [int(t) for t in data["tokens"]],
                            str(data["text"]))
        if not np.array_equal(np.asarray(snap.tokens), np.asarray(conv.tokens)):
            raise KVCPUError(f"{path}: the conversation's tokens do not match its snapshot")
        self.store.put(snap, cost=len(conv.tokens) / PREFILL_TOKENS_PER_S)
        self.conversations[conv.id] = conv
        self._save_conversation_file(conv)
        return conv.id

    # -- reporting -------------------------------------------------------------------------------

    def stats(self) -> dict:
        """The store's figures, and this process's RSS and CPU time from psutil."""
        self.flush()
        return {**self.store.stats(), "rss_bytes": metrics.rss_bytes(), "cpu_seconds": metrics.cpu_seconds(),
                "cpu_percent": metrics.cpu_percent(), "conversations": len(self.conversations),
                "last_turn": asdict(self.last_turn) if self.last_turn else None,
                "last_store": asdict(self.last_store) if self.last_store else None}

    def close(self) -> None:
        """Store what is in flight; close what this session opened (an engine or a store
        passed in stays open)."""
        self.flush()
        self._wait_for_warm_up()
        self._saver.shutdown(wait=True)
        if self._owns_store:
            self.store.close()
        if self._owns_engine:
            self.engine.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _result_of(future: Future) -> None:
    """Wait for a background job; its failure was logged where it happened (the turn's record
    is kept, and its state is prefilled when next needed)."""
    try:
        future.result()
    except Exception:
        pass


def _complete_utf8(data: bytes) -> tuple[str, bytes]:
    """Split bytes into the text of their complete UTF-8 characters and the unfinished rest."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8"), data[cut:]
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace"), b""


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"
