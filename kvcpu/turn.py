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
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import buffers, kernels
from .engine import Engine, SamplingConfig
from .errors import KVCPUError
from .snapshot import Snapshot
from .store import KVStore
from .store.keys import common_prefix_length
from .store.sharing import SharedSnapshot

log = logging.getLogger(__name__)

# What a stored entry is worth to cost-aware eviction: the prefill seconds a hit saves, at
# SmolLM2's rate on 2 cores (docs/design.md); only the ratio between entries matters.
PREFILL_TOKENS_PER_S = 180.0
MAX_PENDING_STORES = 2  # turns' states waiting for the background store, at most
HOLD_S = 5.0  # how long a store waits, at most, for the turns prefilling (BackgroundStore.held)
# A state is handed over as a reply ends, a moment before a client that sends its next request at
# once (an agent) has it parsed, rendered and tokenized: the store waits this long for such a turn
# to begin, so that it runs during that turn's generation rather than its restore and prefill.
GRACE_S = 0.1
# The store's thread yields the cores to llama.cpp's (the next request's prefill): it runs this much
# nicer where the OS allows a thread its own (Linux), and catches up when they are idle; the serve
# suite's warm time to first token is what it is for.
STORE_NICE = 10
# A warm-up reads this many bytes of the newest snapshots from disk into RAM (within the RAM
# budget): the conversations a user comes back to after a restart are most often the last ones.
PREFETCH_BYTES = 256 << 20


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C inside the block waits until the block is done: a turn whose reply was shown is
    recorded and stored whole. In the main thread only; elsewhere signals never arrive."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda sig, frame: caught.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, None)
        else:
            raise KeyboardInterrupt


class ContextFullError(KVCPUError):
    """The prompt and the reply cannot fit the context, even after dropping the middle."""


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
    save_ms: float = 0.0  # after the reply, before the next request can start: get_state and the record


@dataclass(frozen=True)
class StoreStats:
    """What storing a turn's state took, in the background: encode and put."""

    label: str
    tokens: int
    store_ms: float
    snapshot_bytes: int  # what the store keeps for this turn (its own part, when a prefix is shared)


class BackgroundStore:
    """Encodes turns' states and puts them into the store on one thread, in turn order.

    Several engines may share one, so that a turn on any engine can wait for the state another
    turn is still storing. `pending` holds the jobs not known to be done, as (tokens, future).
    """

    def __init__(self, store: KVStore, codec: str, fingerprint: str, model_name: str = ""):
        self.store, self.codec, self.fingerprint, self.model_name = store, codec, fingerprint, model_name
        self.last: StoreStats | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvcpu-store",
                                            initializer=_lower_priority)
        self._pending: list[tuple[np.ndarray, Future]] = []
        self._lock = threading.Lock()
        # Turns restoring and prefilling now (held), and callers waiting for stores (waiters).
        self._gate = threading.Condition()
        self._holds = self._waiters = 0

    def submit(self, state, label: str, owner=None, meta: dict | None = None,
               replaces: list[int] | None = None) -> None:
        """Store `state` in the background; when states come faster than they are stored,
        first wait for the oldest, so that at most MAX_PENDING_STORES are held. `replaces`: the
        tokens of the entry this state succeeds (the conversation's last, after a context
        shift), dropped once the new one is in."""
        with self._lock:
            live = self._live()
            oldest = live[0][1] if len(live) >= MAX_PENDING_STORES else None
        if oldest is not None:
            with self._waiting():
                _result_of(oldest)
        future = self._executor.submit(self._store, state, label, owner, meta or {}, replaces)
        with self._lock:
            self._pending.append((state.tokens, future))

    def _live(self) -> list[tuple[np.ndarray, Future]]:
        """The jobs not done yet (the finished ones are let go); call with the lock held."""
        self._pending = [p for p in self._pending if not p[1].done()]
        return self._pending

    def run(self, fn: Callable, *args) -> Future:
        """Run other work (a warm-up) on the store's thread, in order with the stores."""
        return self._executor.submit(fn, *args)

    def wait_for(self, prompt: Sequence[int], held: int) -> float:
        """Wait only when a pending store holds more of `prompt` than the `held` tokens the
        engine has; returns the ms waited."""
        with self._lock:
            needed = [f for tokens, f in self._live() if common_prefix_length(tokens, prompt) > held]
        if not needed:
            return 0.0  # other conversations' states: this turn goes on while they are stored
        t0 = time.perf_counter()
        with self._waiting():
            _result_of(needed[-1])  # the jobs run in order: the last one needed means all before it
        return (time.perf_counter() - t0) * 1e3

    def flush(self) -> None:
        """Wait until every submitted state is in the store."""
        with self._lock:
            pending, self._pending = self._pending, []
        with self._waiting():
            for _, future in pending:
                _result_of(future)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """While a turn restores and prefills (llama.cpp on every core), stores not yet begun
        wait, for HOLD_S at most: they run during its generation instead, which evaluates a
        token at a time with sampling and streaming between. A store some caller waits for is
        not held. A store begins only after GRACE_S without a turn, or once the turn that began
        within it has prefilled."""
        with self._gate:
            self._holds += 1
            self._gate.notify_all()  # a store waiting for a turn to begin now waits for its prefill
        try:
            yield
        finally:
            with self._gate:
                self._holds -= 1
                self._gate.notify_all()

    @contextlib.contextmanager
    def _waiting(self) -> Iterator[None]:
        with self._gate:
            self._waiters += 1
            self._gate.notify_all()
        try:
            yield
        finally:
            with self._gate:
                self._waiters -= 1

    def close(self) -> None:
        self.flush()
        self._executor.shutdown(wait=True)

    def _store(self, state, label: str, owner, meta: dict, replaces) -> None:
        with self._gate:
            self._gate.wait_for(lambda: self._holds or self._waiters, timeout=GRACE_S)
            self._gate.wait_for(lambda: not self._holds or self._waiters, timeout=HOLD_S)
        t0 = time.perf_counter()
        kernels.use_threads(1)  # leave the other core to llama.cpp, which may be prefilling
        try:
            snap = Snapshot.from_state(state, self.fingerprint, self.codec, model_name=self.model_name, meta=meta)
            key = self.store.put(snap, cost=len(state.tokens) / PREFILL_TOKENS_PER_S, owner=owner)
            nbytes = self.store.stored_bytes(key)
            self._drop_replaced(replaces, key)
        except KVCPUError as exc:
            log.warning("could not store the state of %s: %s", label, exc)
            nbytes = 0
        except Exception:  # a bug must not vanish inside a thread
            log.exception("storing the state of %s failed", label)
            raise
        self.last = StoreStats(label, len(state.tokens), (time.perf_counter() - t0) * 1e3, nbytes)

    def _drop_replaced(self, replaces, key: str) -> None:
        old = self.store.lookup_exact(replaces, self.fingerprint) if replaces else None
        if old is not None and old != key and not self.store.is_shared(old):
            self.store.delete(old)


class StopScanner:
    """Finds stop strings in streamed text, holding back what may be the start of one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text that is safe to show now; after a stop string, nothing more."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self._held = True, ""
            return buf[: min(hits)]
        keep = max((k for s in self.stops for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def rest(self) -> str:
        """What was held back, once the reply ends without a stop string."""
        held, self._held = self._held, ""
        return held


class Turn:
    """One turn in flight: iterate it for the reply's text; afterwards `reply`,
    `finish_reason` ('stop' or 'length') and `stats` say how it went.

    Closing it early (a client gone, Ctrl-C) ends generation and keeps the state so far.
    """

    def __init__(self, runner: TurnRunner, prompt: list[int], max_tokens: int, sampling: SamplingConfig,
                 stop: Sequence[str], finish: Callable[[str], Sequence[int]] | None, label: str, owner,
                 replaces: Sequence[int] | None = None):
        self.runner, self.prompt, self.max_tokens, self.sampling = runner, prompt, max_tokens, sampling
        self.stop, self.finish, self.label, self.owner, self.replaces = stop, finish, label, owner, replaces
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
        with runner.saver.held():  # the previous turn's state is stored during this one's generation
            restored, restore = runner.restore(self.prompt)
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
                     "set_state %.1f), prefilled %d in %.0f ms, first token at %.0f ms, generated %d", self.label,
                     restored, restore["restore_ms"], restore["waited_ms"], restore["lookup_ms"],
                     restore.get("restore_read_ms", 0.0), restore.get("restore_decode_ms", 0.0),
                     restore.get("restore_set_ms", 0.0), len(prompt) - base, prefill_ms, self.stats.ttft_ms,
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
            self.runner.saver.submit(eng.get_state(), self.label, self.owner, meta, self.replaces)
        return (time.perf_counter() - t0) * 1e3


class TurnRunner:
    """Runs turns on one engine over a store: restore, prefill, generate, store."""

    def __init__(self, engine: Engine, store: KVStore, saver: BackgroundStore, keep_first: int = 32):
        self.engine, self.store, self.saver, self.keep_first = engine, store, saver, keep_first
        self.fingerprint = engine.info.fingerprint
        self.last_turn: TurnStats | None = None

    def start(self, prompt: Sequence[int], max_tokens: int, sampling: SamplingConfig | None = None, *,
              stop: Sequence[str] = (), finish: Callable[[str], Sequence[int]] | None = None, label: str = "",
              owner=None, replaces: Sequence[int] | None = None) -> Turn:
        """A turn answering `prompt` (token ids, BOS included). `finish(reply)` returns the tokens
        the stored state is to hold: the prompt, the reply and the template's closing tokens.
        `replaces`: the tokens of the entry the new state succeeds, dropped once it is stored."""
        if max_tokens < 1:
            raise KVCPUError(f"max_tokens must be at least 1, not {max_tokens}")
        if not prompt:
            raise KVCPUError("the prompt has no tokens")
        return Turn(self, list(prompt), max_tokens, sampling or SamplingConfig(), stop, finish, label, owner,
                    replaces)

    def restore(self, prompt: list[int]) -> tuple[int, dict]:
        """Load the longest stored prefix of the prompt (keeping what the engine already holds
        when that is longer); returns (tokens restored, TurnStats' restore timings)."""
        t0 = time.perf_counter()
        common = common_prefix_length(self.engine.tokens, prompt)
        times = {"waited_ms": self.saver.wait_for(prompt, common)}
        t1 = time.perf_counter()
        match = self.store.longest_prefix(prompt[:-1], self.fingerprint)  # at least one token to eval
        times["lookup_ms"] = (time.perf_counter() - t1) * 1e3
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


def _lower_priority() -> None:
    """Lower the calling thread's CPU priority by STORE_NICE, where the OS allows a thread its own."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + STORE_NICE))
    except (AttributeError, OSError) as exc:
        log.debug("the store's thread keeps its priority: %s", exc)


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
