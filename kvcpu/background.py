"""The background store: turns' states encoded and put into the store on one thread, in turn
order, while the next turns run.

Its scheduling keeps it out of the turns' way: a store waits while a turn restores and
prefills (`held`), begins only after a short grace without a turn, and runs at a lower CPU
priority; a turn that needs a state still pending takes it from memory instead of waiting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from . import kernels
from .errors import KVCPUError
from .snapshot import Snapshot
from .store import KVStore
from .store.keys import common_prefix_length

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


@dataclass(frozen=True)
class StoreStats:
    """What storing a turn's state took, in the background: encode and put."""

    label: str
    tokens: int
    store_ms: float
    snapshot_bytes: int  # what the store keeps for this turn (its own part, when a prefix is shared)


class BackgroundStore:
    """Encodes turns' states and puts them into the store on one thread, in turn order.

    Several engines may share one. Until a state is stored it stays in memory (`_pending`: its
    tokens, its job and the state itself, at most MAX_PENDING_STORES of them), and a turn that
    needs it takes it from there (`pending_state`): exact f16, at memcpy speed, never waiting for
    the encode, the write or the fsync. Those bytes count against the store's RAM budget.
    """

    def __init__(self, store: KVStore, codec: str, fingerprint: str, model_name: str = ""):
        self.store, self.codec, self.fingerprint, self.model_name = store, codec, fingerprint, model_name
        self.last: StoreStats | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvcpu-store",
                                            initializer=_lower_priority)
        self._pending: list[tuple] = []  # (tokens, job, KVState, fingerprint)
        self._lock = threading.Lock()
        # Turns restoring and prefilling now (held), and callers waiting for stores (waiters).
        self._gate = threading.Condition()
        self._holds = self._waiters = 0

    def submit(self, state, label: str, owner=None, meta: dict | None = None,
               replaces: list[int] | None = None, fingerprint: str | None = None) -> None:
        """Store `state` in the background; when states come faster than they are stored,
        first wait for the oldest, so that at most MAX_PENDING_STORES are held. `replaces`: the
        tokens of the entry this state succeeds (the conversation's last, after a context
        shift), dropped once the new one is in. `fingerprint`: the model's, or one scoped to a
        tenant (keys.scoped_fingerprint); by default the model's."""
        fingerprint = fingerprint or self.fingerprint
        with self._lock:
            live = self._live()
            oldest = live[0][1] if len(live) >= MAX_PENDING_STORES else None
        if oldest is not None:
            with self._waiting():
                _result_of(oldest)
        self.store.hold_ram(state.nbytes)
        future = self._executor.submit(self._store, state, label, owner, meta or {}, replaces, fingerprint)
        with self._lock:
            self._pending.append((state.tokens, future, state, fingerprint))

    def _live(self) -> list[tuple]:
        """The jobs not done yet (the finished ones are let go); call with the lock held."""
        self._pending = [p for p in self._pending if not p[1].done()]
        return self._pending

    def pending_state(self, prompt: Sequence[int], held: int, fingerprint: str | None = None):
        """(state, n): the pending state sharing the most of `prompt`, n tokens of it, when that
        is more than the `held` tokens the engine has; else None. The newest wins a tie. The
        state is still in memory: its buffer stays alive while the caller holds it."""
        with self._lock:
            best, best_n = None, held
            for tokens, _, state, fp in self._live():
                if fp != (fingerprint or self.fingerprint):
                    continue  # another model's, or another tenant's
                n = common_prefix_length(tokens, prompt)
                if n >= best_n and n > held:
                    best, best_n = state, n
        return (best, best_n) if best is not None else None

    def pending_summary(self) -> dict:
        """States held in memory until they are stored: how many, and their bytes."""
        with self._lock:
            live = self._live()
            return {"pending_states": len(live), "pending_bytes": sum(p[2].nbytes for p in live)}

    def run(self, fn: Callable, *args) -> Future:
        """Run other work (a warm-up) on the store's thread, in order with the stores."""
        return self._executor.submit(fn, *args)

    def flush(self) -> None:
        """Wait until every submitted state is in the store."""
        with self._lock:
            pending, self._pending = self._pending, []
        with self._waiting():
            for _, future, *_ in pending:
                _result_of(future)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """While a turn restores and prefills (llama.cpp on every core), stores not yet begun
        wait, for HOLD_S at most: they run during its generation instead, which evaluates a
        token at a time with sampling and streaming between. A store a flush waits for is not
        held. A store begins only after GRACE_S without a turn, or once the turn that began
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

    def _store(self, state, label: str, owner, meta: dict, replaces, fingerprint: str) -> None:
        with self._gate:
            self._gate.wait_for(lambda: self._holds or self._waiters, timeout=GRACE_S)
            self._gate.wait_for(lambda: not self._holds or self._waiters, timeout=HOLD_S)
        t0 = time.perf_counter()
        kernels.use_threads(1)  # leave the other core to llama.cpp, which may be prefilling
        try:
            snap = Snapshot.from_state(state, fingerprint, self.codec, model_name=self.model_name, meta=meta)
            key = self.store.put(snap, cost=len(state.tokens) / PREFILL_TOKENS_PER_S, owner=owner)
            nbytes = self.store.stored_bytes(key)
            self._drop_replaced(replaces, key, fingerprint)
        except KVCPUError as exc:
            log.warning("could not store the state of %s: %s", _named(label, state), exc)
            nbytes = 0
        except Exception:  # a bug must not vanish inside a thread
            log.exception("storing the state of %s failed", _named(label, state))
            raise
        finally:
            self.store.release_ram(state.nbytes)
        self.last = StoreStats(label, len(state.tokens), (time.perf_counter() - t0) * 1e3, nbytes)

    def _drop_replaced(self, replaces, key: str, fingerprint: str) -> None:
        old = self.store.lookup_exact(replaces, fingerprint) if replaces else None
        if old is not None and old != key and not self.store.is_shared(old):
            self.store.delete(old)


def _named(label: str, state) -> str:
    """What a log line calls a state: its conversation, or (a server's request) its length."""
    return f"conversation {label!r}" if label else f"a {len(state.tokens):,}-token prompt"


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
