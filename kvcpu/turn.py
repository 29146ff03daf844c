"""One turn over an engine and a store, the logic that `Session` and `kvcpu serve` share.

A turn: find the longest stored prefix of the prompt's tokens (or keep what the engine holds,
when that is longer); decode that snapshot and load it; prefill the rest; generate; bring the
engine to the tokens the caller says the conversation now is (the closing template tokens);
then hand the new state to the background store, so that the next request never waits for an
encode it does not need.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from . import buffers, kernels
from .background import BackgroundStore
from .engine import Engine, Sampler, SamplingConfig
from .errors import ContextFullError, KVCPUError
from .snapshot import Snapshot
from .stops import StopScanner
from .store import KVStore
from .store.keys import common_prefix_length, scoped_fingerprint
from .store.sharing import SharedSnapshot

log = logging.getLogger(__name__)

# A warm-up reads this many bytes of the newest snapshots from disk into RAM (within the RAM
# budget): the conversations a user comes back to after a restart are most often the last ones.
PREFETCH_BYTES = 256 << 20


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C or SIGTERM inside the block waits until the block is done: a turn whose reply was
    shown is recorded and stored whole. In the main thread only; elsewhere signals never arrive."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {sig: signal.signal(sig, lambda sig, frame: caught.append(sig)) for sig in DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for sig in dict.fromkeys(caught):
        handler = previous[sig]
        if callable(handler):
            handler(sig, None)
        elif sig == signal.SIGINT or handler == signal.SIG_DFL:
            raise KeyboardInterrupt if sig == signal.SIGINT else SystemExit(128 + sig)


DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
    waited_ms: float = 0.0  # for an earlier turn's store, when this turn needed its state
    lookup_ms: float = 0.0  # the store's longest-prefix lookup
    from_memory: bool = False  # restored from a state still on its way into the store
    save_ms: float = 0.0  # after the reply, before the next request can start: get_state and the record


class Turn:
    """One turn in flight: iterate it for the reply's text; afterwards `reply`,
    `finish_reason` ('stop' or 'length') and `stats` say how it went.

    Closing it early (a client gone, Ctrl-C) ends generation and keeps the state so far.
    """

    def __init__(self, runner: TurnRunner, prompt: list[int], max_tokens: int, sampling: SamplingConfig | Sampler,
                 stop: Sequence[str], finish: Callable[[str], Sequence[int]] | None, label: str, owner,
                 replaces: Sequence[int] | None = None, scope: str | None = None):
        self.runner, self.prompt, self.max_tokens, self.sampling = runner, prompt, max_tokens, sampling
        self.stop, self.finish, self.label, self.owner, self.replaces = stop, finish, label, owner, replaces
        self.fingerprint = scoped_fingerprint(runner.fingerprint, scope)
        self.reply = ""
        self.finish_reason = "stop"
        self.stats: TurnStats | None = None
        self.tokens: list[int] = []  # what the engine holds after the turn, its closing tokens included
        self._chunks = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._chunks

    def __next__(self) -> str:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()

    def _run(self) -> Iterator[str]:
        runner, eng = self.runner, self.runner.engine
        t0 = time.perf_counter()
        with runner.background.held():  # the previous turn's state is stored during this one's generation
            restored, restore = runner.restore(self.prompt, self.fingerprint)
            shifted = runner.make_room(self.prompt, restored, self.max_tokens)
            prompt = eng.tokens + self.prompt[restored:] if shifted else self.prompt
            base = eng.n_past
            t1 = time.perf_counter()
            eng.eval(prompt[base:])
            prefill_ms = (time.perf_counter() - t1) * 1e3
        scanner, generated, pending, ttft_ms, t2 = StopScanner(self.stop), [], b"", 0.0, time.perf_counter()
        tokens = eng.generate(self.max_tokens, self.sampling)
        try:
            for token in tokens:
                if not generated:
                    ttft_ms = (time.perf_counter() - t0) * 1e3
                generated.append(token)
                pending += eng.token_bytes([token])
                text, pending = _complete_utf8(pending)
                shown = scanner.feed(text) if text else ""
                if shown:
                    self.reply += shown
                    yield shown
                if scanner.stopped:
                    break
            else:
                if len(generated) >= self.max_tokens or eng.n_past >= eng.config.n_ctx:
                    self.finish_reason = "length"
            rest = scanner.rest() + pending.decode("utf-8", errors="replace")
            if rest:
                self.reply += rest
                yield rest
        finally:  # also when the consumer stops early: the turn is kept as far as it got
            with interrupts_deferred():
                tokens.close()  # the engine evaluates the last token it yielded
                decode_s = time.perf_counter() - t2
                save_ms = self._save()
            self.stats = TurnStats(
                tokens_restored=restored, tokens_prefilled=len(prompt) - base, tokens_generated=len(generated),
                prefill_ms=prefill_ms, ttft_ms=ttft_ms or (time.perf_counter() - t0) * 1e3,
                decode_tps=len(generated) / decode_s if decode_s > 0 else 0.0, context_shifted=shifted,
                save_ms=save_ms, **restore)
            runner.last_turn = self.stats
            log.info("turn %s: restored %d tokens in %.1f ms (waited %.1f, lookup %.1f, read %.1f, decode %.1f, "
                     "set_state %.1f%s), prefilled %d in %.0f ms, first token at %.0f ms, generated %d", self.label,
                     restored, restore["restore_ms"], restore["waited_ms"], restore["lookup_ms"],
                     restore.get("restore_read_ms", 0.0), restore.get("restore_decode_ms", 0.0),
                     restore.get("restore_set_ms", 0.0), ", from memory" if restore.get("from_memory") else "",
                     len(prompt) - base, prefill_ms, self.stats.ttft_ms,
                     len(generated))

    def _save(self) -> float:
        """Bring the engine to the conversation's tokens (the caller's `finish` says which:
        the reply, then the closing template tokens) and hand its state to the background
        store; returns the ms this took after the closing tokens' eval."""
        eng = self.runner.engine
        if self.finish is not None:
            target = list(self.finish(self.reply))
            keep = common_prefix_length(eng.tokens, target)
            if keep < eng.n_past:  # generated past a stop string, or tokenized otherwise
                eng.truncate(keep)
            if eng.n_past < len(target) <= eng.config.n_ctx:
                eng.eval(target[eng.n_past :])
        t0 = time.perf_counter()
        self.tokens = eng.tokens
        if self.tokens:
            meta = {"conversation": self.label} if self.label else None
            # get_state copies: the engine goes on while the background store encodes the copy
            self.runner.background.submit(eng.get_state(), self.label, self.owner, meta, self.replaces,
                                          self.fingerprint)
        return (time.perf_counter() - t0) * 1e3


class TurnRunner:
    """Runs turns on one engine over a store: restore, prefill, generate, store."""

    def __init__(self, engine: Engine, store: KVStore, background: BackgroundStore, keep_first: int = 32):
        self.engine, self.store, self.background, self.keep_first = engine, store, background, keep_first
        self.fingerprint = engine.info.fingerprint
        self.held_fingerprint = self.fingerprint  # whose tokens the engine holds: the model's, or a scope's
        self.last_turn: TurnStats | None = None

    def start(self, prompt: Sequence[int], max_tokens: int, sampling: SamplingConfig | Sampler | None = None, *,
              stop: Sequence[str] = (), finish: Callable[[str], Sequence[int]] | None = None, label: str = "",
              owner=None, replaces: Sequence[int] | None = None, scope: str | None = None) -> Turn:
        """A turn answering `prompt` (token ids, BOS included). `finish(reply)` returns the tokens
        the stored state is to hold: the prompt, the reply and the template's closing tokens.
        `replaces`: the tokens of the entry the new state succeeds, dropped once it is stored.
        `scope`: a tenant (a user, an API key) whose KV is reused only by its own turns."""
        if max_tokens < 1:
            raise KVCPUError(f"max_tokens must be at least 1, not {max_tokens}")
        if not prompt:
            raise KVCPUError("the prompt has no tokens")
        return Turn(self, list(prompt), max_tokens, sampling or SamplingConfig(), stop, finish, label, owner,
                    replaces, scope)

    def restore(self, prompt: list[int], fingerprint: str | None = None) -> tuple[int, dict]:
        """Load the longest known prefix of the prompt: what the engine holds, a state still on
        its way into the store (exact, from memory, never waited for), or a stored snapshot;
        returns (tokens restored, TurnStats' restore timings). `fingerprint`: the model's, or
        one scoped to a tenant, whose entries alone (and whose tokens in the engine) count."""
        t0 = time.perf_counter()
        fingerprint = fingerprint or self.fingerprint
        mine = fingerprint == self.held_fingerprint  # another tenant's tokens in the engine are not reused
        self.held_fingerprint = fingerprint
        common = common_prefix_length(self.engine.tokens, prompt) if mine else 0
        pending = self.background.pending_state(prompt[:-1], common, fingerprint)  # at least one token to eval
        t1 = time.perf_counter()
        # With a state in memory to restore, the lookup does not wait for the store's own put (its
        # write and fsync hold the store): a longer stored prefix than that state is rare.
        match = self.store.longest_prefix(prompt[:-1], fingerprint, wait=pending is None)
        times = {"waited_ms": 0.0, "lookup_ms": (time.perf_counter() - t1) * 1e3}
        if pending is not None and (match is None or pending[1] >= match.n_tokens):
            return self._restore_pending(*pending, t0, times)
        if match is None or match.n_tokens <= common:
            self.engine.truncate(common)  # what the engine holds already is the longest prefix
            return common, {**times, "restore_ms": (time.perf_counter() - t0) * 1e3}
        try:
            t1 = time.perf_counter()
            snap = self.store.get(match.key)
            t2 = time.perf_counter()
            with kernels.threads(1):  # llama.cpp's threads are still on both cores
                state = snap.decode(fingerprint, n_tokens=match.n_tokens)
            t3 = time.perf_counter()
            self.engine.set_state(state)
            t4 = time.perf_counter()
        except KVCPUError as exc:
            log.warning("stored snapshot %s is unusable (%s); prefilling instead", match.key, exc)
            self.engine.reset()
            return 0, {**times, "restore_ms": (time.perf_counter() - t0) * 1e3}
        return match.n_tokens, {**times, "restore_ms": (t4 - t0) * 1e3, "restore_read_ms": (t2 - t1) * 1e3,
                                "restore_decode_ms": (t3 - t2) * 1e3, "restore_set_ms": (t4 - t3) * 1e3}

    def _restore_pending(self, state, n: int, t0: float, times: dict) -> tuple[int, dict]:
        """Load the first n tokens of a state the background store has not stored yet."""
        t1 = time.perf_counter()
        self.engine.set_state(state if n == len(state.tokens) else state.head(n))
        t2 = time.perf_counter()
        return n, {**times, "restore_ms": (t2 - t0) * 1e3, "restore_set_ms": (t2 - t1) * 1e3, "from_memory": True}

    def make_room(self, prompt: list[int], restored: int, max_tokens: int) -> bool:
        """When the turn would outgrow n_ctx, drop the middle of what is loaded: keep the first
        tokens (attention sinks, the system prompt) and the most recent ones."""
        n_ctx = self.engine.config.n_ctx
        need = self.engine.n_past + (len(prompt) - restored) + max_tokens - n_ctx
        if need <= 0:
            return False
        keep = min(self.keep_first, self.engine.n_past)
        droppable = self.engine.n_past - keep
        if need > droppable:
            raise ContextFullError(f"the message needs {len(prompt) - restored + max_tokens} tokens, more than "
                                   f"n_ctx={n_ctx} leaves; send a shorter message or lower max_tokens")
        n_drop = min(droppable, need + n_ctx // 8)  # a little extra, so the next turns fit too
        self.engine.shift_context(keep, n_drop)
        return True

    def warm_up(self, codec: str) -> None:
        """Pay what the first turn after a start would: the engine's first eval and its KV
        pages, the codec's kernels loaded from Numba's cache, and buffers for the largest
        stored state of this model's context."""
        t0 = time.perf_counter()
        state = self.engine.warm_up()
        largest = max((e["tokens"] for e in self.store.entries()), default=0)
        # Buffers for the biggest stored state, touched now: a restore, the save after it, and the
        # previous turn's state the background store may still hold.
        buffers.POOL.reserve(largest * self.engine.info.kv_bytes_per_token_f16 + (1 << 20), count=3)
        with kernels.threads(1):  # as restore and the background store run them
            # Through bytes, as the store hands snapshots out: Numba compiles (or loads) a kernel
            # per argument type, and read-only arrays are a type of their own.
            snap = Snapshot.from_bytes(Snapshot.from_state(state, self.fingerprint, codec).to_bytes())
            snap.packed.decode()
            snap.packed.decode(n_tokens=1)
            try:  # a shared prefix's restore decodes each piece into its place in a wider buffer
                SharedSnapshot(snap, snap, np.concatenate([state.tokens, state.tokens])).decode()
            except KVCPUError:  # a state that cannot be shared (two caches): nothing to warm
                pass
        read = self.store.prefetch(self.fingerprint, PREFETCH_BYTES)
        log.info("warmed up in %.0f ms (%d recent snapshots read into RAM)", (time.perf_counter() - t0) * 1e3, read)


def _complete_utf8(data: bytes) -> tuple[str, bytes]:
    """Split bytes into the text of their complete UTF-8 characters and the unfinished rest."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8"), data[cut:]
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace"), b""
