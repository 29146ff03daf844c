"""KVStore: snapshots kept under a byte budget, found by the longest stored prefix of a prompt.

The store owns the byte accounting and the eviction loop; a policy only orders keys. Under
pressure an entry first goes down the demotion ladder (re-encoded by a smaller codec), and
is dropped only when no rung is left.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import KVCPUError
from ..snapshot import Snapshot
from .keys import BLOCK_TOKENS, block_hashes, entry_key, seed_hash, tail_key
from .policies import make_policy

log = logging.getLogger(__name__)

DEFAULT_LADDER = ("f16", "int8", "int4-rot")


@dataclass(frozen=True)
class Match:
    """The longest stored prefix of a prompt: which entry, and how many of its tokens match."""

    key: str
    n_tokens: int
    entry_tokens: int


@dataclass
class _Entry:
    blob: bytes  # the serialized Snapshot, checksummed
    tokens: np.ndarray
    fingerprint: str
    codec: str
    cost: float


@dataclass
class StoreStats:
    """Counters; `as_dict` adds the derived ratios."""

    lookups: int = 0
    hits: int = 0
    puts: int = 0
    evictions: int = 0
    demotions: dict = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict:
        return {"lookups": self.lookups, "hits": self.hits, "hit_ratio": self.hits / max(self.lookups, 1),
                "puts": self.puts, "evictions": self.evictions, "demotions": dict(self.demotions)}


class KVStore:
    """Snapshots of one or more models under a RAM byte budget. Thread-safe."""

    def __init__(self, budget_bytes: int, policy: str = "hybrid", ladder: Sequence[str] = DEFAULT_LADDER):
        if budget_bytes <= 0:
            raise KVCPUError(f"budget_bytes must be positive, not {budget_bytes}")
        self.budget = int(budget_bytes)
        self.ladder = tuple(ladder)
        self.policy = make_policy(policy, self.budget)
        self._entries: dict[str, _Entry] = {}
        self._prefix: dict[int, set[str]] = defaultdict(set)  # block hash -> entries holding that prefix
        self.used = 0
        self._stats = StoreStats()
        self._lock = threading.RLock()

    # -- writing ---------------------------------------------------------------------------

    def put(self, snapshot: Snapshot, cost: float = 1.0) -> str:
        """Keep a snapshot (replacing one with the same tokens); returns its key. `cost` is what
        a hit saves, in prefill seconds: cost-aware policies keep what saves most per byte."""
        if snapshot.tokens is None:
            raise KVCPUError("a snapshot without token ids cannot be found by prefix; it has no key")
        tokens = np.asarray(snapshot.tokens, dtype=np.int32)
        key = entry_key(tokens, snapshot.fingerprint)
        entry = _Entry(snapshot.to_bytes(), tokens, snapshot.fingerprint, snapshot.packed.codec, cost)
        with self._lock:
            if len(entry.blob) > self.budget:
                raise KVCPUError(f"a {len(entry.blob):,}-byte snapshot does not fit a {self.budget:,}-byte budget")
            if key in self._entries:
                self._drop(key)
                self.policy.on_remove(key)
            self._entries[key] = entry
            self.used += len(entry.blob)
            for h in block_hashes(tokens, entry.fingerprint):
                self._prefix[h].add(key)
            self.policy.on_insert(key, len(entry.blob), cost)
            self._stats.puts += 1
            self._enforce_budget()
        return key

    def _enforce_budget(self) -> None:
        while self.used > self.budget:
            victim = self.policy.victim()
            if self._demote(victim):
                continue
            self._drop(victim)
            self.policy.on_remove(victim)
            self._stats.evictions += 1

    def _demote(self, key: str) -> bool:
        """Re-encode an entry with the next codec of the ladder; False when none is left."""
        entry = self._entries[key]
        rungs = self.ladder[self.ladder.index(entry.codec) + 1 :] if entry.codec in self.ladder else ()
        if not rungs:
            return False
        snap = Snapshot.from_bytes(entry.blob)
        smaller = Snapshot.from_state(snap.decode(), snap.fingerprint, rungs[0], model_name=snap.model_name,
                                      meta=snap.meta).to_bytes()
        self.used += len(smaller) - len(entry.blob)
        self._stats.demotions[f"{entry.codec}->{rungs[0]}"] += 1
        log.debug("demoted %s from %s to %s", key, entry.codec, rungs[0])
        entry.blob, entry.codec = smaller, rungs[0]
        self.policy.on_access(key, len(smaller), entry.cost)  # its size changed; it stays where it was
        return True

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self.used -= len(entry.blob)
        for h in block_hashes(entry.tokens, entry.fingerprint):
            holders = self._prefix.get(h)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self._prefix[h]

    def delete(self, key: str) -> None:
        with self._lock:
            if key not in self._entries:
                raise KVCPUError(f"no entry {key!r} in the store")
            self._drop(key)
            self.policy.on_remove(key)

    # -- reading ---------------------------------------------------------------------------

    def get(self, key: str) -> Snapshot:
        """The snapshot under `key`, verified (checksum) on the way out."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                raise KVCPUError(f"no entry {key!r} in the store")
            self.policy.on_access(key, len(entry.blob), entry.cost)
            blob = entry.blob
        return Snapshot.from_bytes(blob)

    def longest_prefix(self, tokens: Sequence[int], fingerprint: str) -> Match | None:
        """The entry sharing the longest prefix with `tokens`, in time proportional to the
        prompt's length in blocks; an entry all of whose tokens match counts whole."""
        tokens = np.asarray(tokens, dtype=np.int32)
        with self._lock:
            self._stats.lookups += 1
            best, last = None, seed_hash(fingerprint)
            for i, h in enumerate(block_hashes(tokens, fingerprint)):
                holders = self._prefix.get(h)
                if not holders:
                    break
                key = min(holders, key=lambda k: len(self._entries[k].tokens))
                best, last = Match(key, (i + 1) * BLOCK_TOKENS, len(self._entries[key].tokens)), h
            start = best.n_tokens if best else 0
            for n in range(min(len(tokens), start + BLOCK_TOKENS - 1), start, -1):
                key = tail_key(last, tokens[start:n], n)  # an entry ending inside the next block
                if key in self._entries:
                    best = Match(key, n, n)
                    break
            if best is None or not np.array_equal(self._entries[best.key].tokens[: best.n_tokens],
                                                  tokens[: best.n_tokens]):
                return None  # hashes may collide; tokens cannot
            self._stats.hits += 1
            return best

    # -- reporting -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def stats(self) -> dict:
        with self._lock:
            codecs: dict[str, int] = defaultdict(int)
            for e in self._entries.values():
                codecs[e.codec] += 1
            return {"entries": len(self._entries), "ram_bytes": self.used, "budget_bytes": self.budget,
                    "policy": self.policy.name, "codecs": dict(codecs), **self._stats.as_dict()}

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
            self._prefix.clear()
            self.used = 0
