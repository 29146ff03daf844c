"""Conversations over one engine and one store: every turn restores what is stored and
prefills only what is new.

A turn: format the conversation with the model's chat template; find the longest stored
prefix of its tokens; decode that snapshot and load it; prefill the rest; generate; encode the
new state and put it into the store. Switching between conversations therefore never
re-prefills what is stored.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field

import numpy as np

from . import metrics, records
from .background import PREFILL_TOKENS_PER_S, BackgroundStore, StoreStats
from .codecs import refuse_merged_cells
from .engine import Engine, EngineConfig, SamplingConfig
from .errors import KVCPUError, RecordError, UnknownConversationError
from .records import RecordStore
from .snapshot import Snapshot
from .store import KVStore, StoreConfig
from .template import ChatFormat
from .turn import TurnRunner, TurnStats, interrupts_deferred

log = logging.getLogger(__name__)

__all__ = ["Conversation", "Session", "StoreStats", "TurnStats", "UnknownConversationError"]


@dataclass
class Conversation:
    """A conversation's messages, and the exact tokens the model has seen of it."""

    id: str
    messages: list[dict] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # the rendered conversation that `tokens` encode

    def to_json(self) -> dict:
        return asdict(self)


class Session:
    """Many conversations over one model, with their KV state kept in a KVStore."""

    def __init__(self, model="smollm2-135m", *, store: StoreConfig | KVStore | None = None, n_ctx: int = 4096,
                 keep_first: int = 32, n_threads: int | None = None, progress: bool = False, **store_options):
        """`store`: a StoreConfig to open, or a KVStore to use (it stays the caller's); `store_options`
        are StoreConfig's fields (codec, budget_bytes, disk_dir, policy, remote, ...) over it."""
        if isinstance(store, KVStore):
            extra = sorted(set(store_options) - {"codec"})
            if extra:
                raise KVCPUError(f"{', '.join(extra)}: options of the store, which was passed in already open")
            self.codec = store_options.get("codec", store.codec)
            refuse_merged_cells(self.codec)
        self._owns_store = not isinstance(store, KVStore)  # made first: a store it refuses costs no model load
        if self._owns_store:
            config = (store or StoreConfig()).replace(**store_options)
            self.codec, store = config.codec, config.open()
        self.store = store
        self._owns_engine = not isinstance(model, Engine)  # an engine passed in stays the caller's
        self.engine = model if isinstance(model, Engine) else Engine.from_config(
            model, EngineConfig(n_ctx=n_ctx, n_threads=n_threads), progress=progress)
        self.fingerprint = self.engine.info.fingerprint
        self.keep_first = keep_first
        self.conversations: dict[str, Conversation] = {}
        self._background = BackgroundStore(self.store, self.codec, self.fingerprint, model_name=self.engine.info.path)
        self.runner = TurnRunner(self.engine, self.store, self._background, keep_first)
        self._warming: Future | None = None
        self._format = ChatFormat.of(self.engine)
        self._records = RecordStore.of(self.store, self.fingerprint)
        self._record_failing = False
        for record in self._records.load_all():
            self.conversations[record["id"]] = Conversation(**record)

    # -- conversations ---------------------------------------------------------------------------

    def new(self, conversation_id: str) -> Conversation:
        """The conversation by that name: known here, or on the remote tier, or else a new one."""
        conv = self.conversations.get(conversation_id) or self._from_remote(conversation_id)
        if conv is None:
            conv = self.conversations[conversation_id] = Conversation(conversation_id)
        return conv

    def get(self, conversation_id: str) -> Conversation:
        """The conversation by that name, known here or on the remote tier."""
        conv = self.conversations.get(conversation_id) or self._from_remote(conversation_id)
        if conv is None:
            raise UnknownConversationError(f"no conversation {conversation_id!r}; known: "
                                           f"{sorted(self.conversations)}")
        return conv

    def _from_remote(self, conversation_id: str) -> Conversation | None:
        """A conversation another host recorded on the remote tier, now known here too."""
        record = self._records.get_remote(conversation_id)
        if record is None:
            return None
        conv = self.conversations[conversation_id] = Conversation(**record)
        return conv

    def forget(self, conversation_id: str) -> None:
        """Drop a conversation and its stored snapshot."""
        conv = self.get(conversation_id)
        self.flush()
        key = self.store.lookup_exact(conv.tokens, self.fingerprint) if conv.tokens else None
        if key is not None:
            self.store.delete(key)
        del self.conversations[conversation_id]
        self._records.delete(conversation_id)

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

    @property
    def last_turn(self) -> TurnStats | None:
        """What the last turn cost, and where its time went."""
        return self.runner.last_turn

    @property
    def last_store(self) -> StoreStats | None:
        """What storing the last stored turn took, in the background."""
        return self._background.last

    def chat(self, conversation_id: str, message: str, *, max_tokens: int = 256, temperature: float = 0.0,
             seed: int | None = None, repeat_penalty: float = 1.1, stream: bool = False):
        """The reply to `message`; with stream=True, an iterator of text chunks as they come."""
        if max_tokens < 1:
            raise KVCPUError(f"max_tokens must be at least 1, not {max_tokens}")
        sampling = SamplingConfig(temperature, seed=seed, repeat_penalty=repeat_penalty)
        chunks = self._turn(self.new(conversation_id), message, max_tokens, sampling)
        return chunks if stream else "".join(chunks)

    def _turn(self, conv: Conversation, message: str, max_tokens: int, sampling: SamplingConfig):
        self._wait_for_warm_up()
        messages = conv.messages + [{"role": "user", "content": message}]
        prompt_text = self._format.render(messages, True)
        closed = {}

        def finish(reply: str) -> list[int]:
            """The conversation's tokens after the reply: its closing template tokens evaluated
            too, so that the stored state is exactly the conversation so far."""
            closed["messages"] = messages + [{"role": "assistant", "content": reply}]
            closed["text"] = full = self._format.render(closed["messages"], False)
            closing = full[len(prompt_text) + len(reply):] if full.startswith(prompt_text + reply) else ""
            closed["target"] = self.engine.tokens + (self.engine.tokenize(closing, add_bos=False) if closing else [])
            closed["fallback"] = prompt_text + reply
            return closed["target"]

        turn = self.runner.start(self._extend(conv, prompt_text), max_tokens, sampling, finish=finish,
                                 label=conv.id, replaces=list(conv.tokens))
        try:
            yield from turn
        finally:  # also when the consumer stops early (Ctrl-C): the turn is kept as far as it got
            with interrupts_deferred():
                turn.close()
                if closed:
                    conv.messages, conv.tokens = closed["messages"], turn.tokens or self.engine.tokens
                    conv.text = closed["text"] if conv.tokens == closed["target"] else closed["fallback"]
                    # Written after the state is handed over: a crash before the store lands finds this
                    # record's tokens and restores the longest stored prefix of them (the turn before).
                    self._save_conversation_file(conv)

    def _extend(self, conv: Conversation, text: str) -> list[int]:
        """Tokens of `text`: the conversation's own tokens plus the new part, so that what the
        model saw (its generated tokens included) stays the prefix; else tokenized afresh."""
        if conv.tokens and text.startswith(conv.text):
            return conv.tokens + self.engine.tokenize(text[len(conv.text):], add_bos=False)
        return self.engine.tokenize(text)

    def flush(self) -> None:
        """Wait until every turn's state is in the store."""
        self._background.flush()

    def warm_up(self, background: bool = False) -> None:
        """Pay what the first turn after a start would (TurnRunner.warm_up). With
        background=True it runs on the store's thread while the user types, and the first turn
        waits for it only if it comes sooner."""
        if background:
            self._warming = self._background.run(self.runner.warm_up, self.codec)
        else:
            self.runner.warm_up(self.codec)

    def _wait_for_warm_up(self) -> None:
        warming, self._warming = self._warming, None
        if warming is not None:
            warming.result()

    # -- persistence -----------------------------------------------------------------------------

    def _save_conversation_file(self, conv: Conversation) -> None:
        """Write the conversation's record; when the disk refuses, warn once and go on with the
        conversation in memory (its state is stored apart)."""
        try:
            self._records.save(conv.to_json())
        except RecordError as exc:
            if not self._record_failing:
                log.warning("%s; the conversation goes on in memory", exc)
            self._record_failing = True
        else:
            self._record_failing = False

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
        try:
            conv = Conversation(**records.check(data))
        except ValueError as exc:
            raise KVCPUError(f"{path}: its conversation is unreadable ({exc})") from None
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
        self._wait_for_warm_up()
        self._background.close()
        if self._owns_store:
            self.store.close()
        if self._owns_engine:
            self.engine.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
