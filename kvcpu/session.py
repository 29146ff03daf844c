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
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jinja2
import numpy as np

from . import metrics
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
    restore_ms: float
    prefill_ms: float
    ttft_ms: float
    decode_tps: float
    snapshot_bytes: int  # what the store keeps for this turn (its own part, when a prefix is shared)
    context_shifted: bool


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
        key = self.store.lookup_exact(conv.tokens, self.fingerprint) if conv.tokens else None
        if key is not None:
            self.store.delete(key)
        del self.conversations[conversation_id]
        if self._conv_dir is not None:
            (self._conv_dir / f"{_safe(conversation_id)}.json").unlink(missing_ok=True)

    def list(self) -> list[dict]:
        """One row per conversation: turns, tokens, and where its snapshot is."""
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
        sampling = SamplingConfig(temperature, seed=seed, repeat_penalty=repeat_penalty)
        chunks = self._turn(self.new(conversation_id), message, max_tokens, sampling)
        return chunks if stream else "".join(chunks)

    def _turn(self, conv: Conversation, message: str, max_tokens: int, sampling: SamplingConfig) -> Iterator[str]:
        t0 = time.perf_counter()
        messages = conv.messages + [{"role": "user", "content": message}]
        prompt_text = self._render(messages, True)
        prompt = self._extend(conv, prompt_text)
        restored, restore_ms = self._restore(prompt)
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
            snapshot_bytes = self._finish(conv, messages, prompt_text, reply)
            self.last_turn = TurnStats(
                tokens_restored=restored, tokens_prefilled=len(prompt) - base, tokens_generated=len(generated),
                restore_ms=restore_ms, prefill_ms=prefill_ms, ttft_ms=ttft_ms or (time.perf_counter() - t0) * 1e3,
                decode_tps=len(generated) / decode_s if decode_s > 0 else 0.0, snapshot_bytes=snapshot_bytes,
                context_shifted=shifted)
            log.info("turn %s: restored %d tokens in %.1f ms, prefilled %d in %.0f ms, generated %d",
                     conv.id, restored, restore_ms, len(prompt) - base, prefill_ms, len(generated))

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

    def _restore(self, prompt: list[int]) -> tuple[int, float]:
        """Load the longest stored prefix of the prompt (keeping what the engine already holds
        when that is longer); returns (tokens restored, ms)."""
        t0 = time.perf_counter()
        held = self.engine.tokens
        common = common_prefix_length(held, prompt)
        match = self.store.longest_prefix(prompt[:-1], self.fingerprint)  # at least one token to eval
        if match is None or match.n_tokens <= common:
            self.engine.truncate(common)  # what the engine holds already is the longest prefix
            return common, (time.perf_counter() - t0) * 1e3
        try:
            snap = self.store.get(match.key)
            self.engine.set_state(snap.decode(self.fingerprint, n_tokens=match.n_tokens))
        except KVCPUError as exc:
            log.warning("stored snapshot %s is unusable (%s); prefilling instead", match.key, exc)
            self.engine.reset()
            return 0, (time.perf_counter() - t0) * 1e3
        return match.n_tokens, (time.perf_counter() - t0) * 1e3

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

    def _finish(self, conv, messages, prompt_text, reply) -> int:
        """Close the assistant message, remember the conversation, store its new state."""
        messages = messages + [{"role": "assistant", "content": reply}]
        full_text = self._render(messages, False)
        closing = full_text[len(prompt_text) + len(reply):] if full_text.startswith(prompt_text + reply) else ""
        if closing:  # evaluated now, so that the stored state is exactly the conversation so far
            closing_tokens = self.engine.tokenize(closing, add_bos=False)
            if self.engine.n_past + len(closing_tokens) <= self.engine.config.n_ctx:
                self.engine.eval(closing_tokens)
        conv.messages, conv.text = messages, full_text if closing else prompt_text + reply
        conv.tokens = self.engine.tokens
        nbytes = 0
        try:
            snap = Snapshot.from_state(self.engine.get_state(), self.fingerprint, self.codec,
                                       model_name=self.engine.info.path, meta={"conversation": conv.id})
            key = self.store.put(snap, cost=len(conv.tokens) / PREFILL_TOKENS_PER_S)
            nbytes = self.store.stored_bytes(key)  # put serialized it once already
        except KVCPUError as exc:
            log.warning("could not store the state of %s: %s", conv.id, exc)
        self._save_conversation_file(conv)
        return nbytes

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
        return {**self.store.stats(), "rss_bytes": metrics.rss_bytes(), "cpu_seconds": metrics.cpu_seconds(),
                "cpu_percent": metrics.cpu_percent(), "conversations": len(self.conversations),
                "last_turn": asdict(self.last_turn) if self.last_turn else None}

    def close(self) -> None:
        """Close what this session opened; an engine or a store passed in stays open."""
        if self._owns_store:
            self.store.close()
        if self._owns_engine:
            self.engine.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
