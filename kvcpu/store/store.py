"""KVStore: snapshots under byte budgets, found by the longest stored prefix of a prompt.

Two tiers. With a disk directory, the disk holds every entry (write-through, so entries
outlive the process) and RAM caches the hot ones; without one, RAM is all there is. Each tier
has its own budget and policy; the store owns the byte accounting and the eviction loop.
Under pressure an entry first goes down the demotion ladder (re-encoded by a smaller codec);
only then does it leave the tier (RAM: it stays on disk; disk: it is gone).
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
from .disk import DiskTier, StoreDiskError
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
    tokens: np.ndarray
    fingerprint: str
    cost: float
    ram: bytes | None = None  # the serialized Snapshot, when cached in RAM
    ram_codec: str = ""
    disk_size: int = 0  # bytes of its file, when on disk
    disk_codec: str = ""


@dataclass
class _Counters:
    lookups: int = 0
    hits: int = 0
    puts: int = 0
    evictions: dict = field(default_factory=lambda: defaultdict(int))
    demotions: dict = field(default_factory=lambda: defaultdict(int))
    disk_errors: int = 0


class KVStore:
    """Snapshots of one or more models under RAM and disk byte budgets. Thread-safe."""

    def __init__(self, budget_bytes: int, policy: str = "hybrid", disk_dir=None,
                 disk_budget_bytes: int | None = None, codec: str = "int8",
                 ladder: Sequence[str] = DEFAULT_LADDER):
        if budget_bytes <= 0:
            raise KVCPUError(f"budget_bytes must be positive, not {budget_bytes}")
        self.budget = int(budget_bytes)
        self.disk_budget = int(disk_budget_bytes) if disk_budget_bytes else 1 << 62
        self.codec = codec
        self.ladder = tuple(ladder)
        self.policy_name = policy
        self.ram_policy = make_policy(policy, self.budget)
        self.disk_policy = make_policy(policy, self.disk_budget)
        self.used = self.disk_used = 0
        self._entries: dict[str, _Entry] = {}
        self._prefix: dict[int, set[str]] = defaultdict(set)  # block hash -> entries holding that prefix
        self._n = _Counters()
        self._lock = threading.RLock()
        self.disk = DiskTier(disk_dir) if disk_dir is not None else None
        if self.disk is not None:
            self._load_disk_index()

    # -- the index ---------------------------------------------------------------------------

    def _index(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        for h in block_hashes(entry.tokens, entry.fingerprint):
            self._prefix[h].add(key)

    def _unindex(self, key: str) -> None:
        entry = self._entries.pop(key)
        for h in block_hashes(entry.tokens, entry.fingerprint):
            holders = self._prefix.get(h)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self._prefix[h]

    def _load_disk_index(self) -> None:
        """Rebuild the index from the files on disk, oldest first (so recency starts right)."""
        found = self.disk.scan()
        for key in set(self._entries) - set(found):
            entry = self._entries[key]
            if entry.disk_size:  # another process evicted it
                self.disk_used -= entry.disk_size
                self.disk_policy.on_remove(key)
                entry.disk_size = 0
                if entry.ram is None:
                    self._unindex(key)
        for key, info in sorted(found.items(), key=lambda kv: kv[1]["created"]):
            if key in self._entries and self._entries[key].disk_size:
                continue
            entry = self._entries.get(key) or _Entry(info["tokens"], info["fingerprint"], 1.0)
            entry.disk_size, entry.disk_codec = info["size"], info["codec"]
            if key not in self._entries:
                self._index(key, entry)
            self.disk_used += entry.disk_size
            self.disk_policy.on_insert(key, entry.disk_size, entry.cost)
        self._enforce(self.disk_policy, "disk")

    # -- writing -----------------------------------------------------------------------------

    def put(self, snapshot: Snapshot, cost: float = 1.0, supersede: bool = True) -> str:
        """Keep a snapshot (replacing one with the same tokens); returns its key.

        `cost` is what a hit saves, in prefill seconds: cost-aware policies keep what saves most
        per byte. With supersede, entries whose tokens are a prefix of this one's are dropped:
        this one restores their prefixes too (to a whole block), as a conversation's new turn
        replaces its last. With a disk tier the snapshot is written through; if that write fails
        (disk full), the entry stays in RAM and StoreDiskError says why.
        """
        if snapshot.tokens is None:
            raise KVCPUError("a snapshot without token ids cannot be found by prefix; it has no key")
        tokens = np.asarray(snapshot.tokens, dtype=np.int32)
        key = entry_key(tokens, snapshot.fingerprint)
        blob = snapshot.to_bytes()
        codec = snapshot.packed.codec
        with self._lock:
            if len(blob) > self.budget and self.disk is None:
                raise KVCPUError(f"a {len(blob):,}-byte snapshot does not fit a {self.budget:,}-byte budget")
            if key in self._entries:
                self._forget(key)
            if supersede:
                for old in self._prefixes_of(tokens, snapshot.fingerprint):
                    self._forget(old)
            entry = _Entry(tokens, snapshot.fingerprint, cost)
            self._index(key, entry)
            self._n.puts += 1
            if len(blob) <= self.budget:
                self._to_ram(key, entry, blob, codec)
            if self.disk is not None:
                self._to_disk(key, entry, blob, codec)
        return key

    def _prefixes_of(self, tokens: np.ndarray, fingerprint: str) -> list[str]:
        """Keys of shorter entries whose tokens are a prefix of `tokens`."""
        found = set()
        for h in block_hashes(tokens, fingerprint):
            holders = self._prefix.get(h)
            if not holders:
                break
            found |= holders
        found |= {k for k in (self.lookup_exact(tokens[:n], fingerprint)
                              for n in range(max(1, len(tokens) - BLOCK_TOKENS), len(tokens))) if k}
        return [k for k in found if len(self._entries[k].tokens) < len(tokens)
                and np.array_equal(self._entries[k].tokens, tokens[: len(self._entries[k].tokens)])]

    def lookup_exact(self, tokens: Sequence[int], fingerprint: str) -> str | None:
        """The key of the entry holding exactly these tokens, if any (not counted as a lookup)."""
        key = entry_key(np.asarray(tokens, dtype=np.int32), fingerprint)
        return key if key in self._entries else None

    def put_state(self, state, fingerprint: str, cost: float = 1.0, **snapshot_kw) -> str:
        """Encode a KVState with the store's codec and keep it."""
        return self.put(Snapshot.from_state(state, fingerprint, self.codec, **snapshot_kw), cost)

    def _to_ram(self, key: str, entry: _Entry, blob: bytes, codec: str) -> None:
        entry.ram, entry.ram_codec = blob, codec
        self.used += len(blob)
        self.ram_policy.on_insert(key, len(blob), entry.cost)
        self._enforce(self.ram_policy, "ram")

    def _to_disk(self, key: str, entry: _Entry, blob: bytes, codec: str) -> None:
        try:
            self.disk.write(key, blob)
        except StoreDiskError:
            self._n.disk_errors += 1
            if entry.ram is None:
                self._unindex(key)
            raise
        entry.disk_size, entry.disk_codec = len(blob), codec
        self.disk_used += len(blob)
        self.disk_policy.on_insert(key, len(blob), entry.cost)
        self._enforce(self.disk_policy, "disk")

    def _enforce(self, policy, tier: str) -> None:
        budget = self.budget if tier == "ram" else self.disk_budget
        while (self.used if tier == "ram" else self.disk_used) > budget:
            victim = policy.victim()
            if self._demote(victim, tier):
                continue
            policy.on_remove(victim)
            self._evict(victim, tier)
            self._n.evictions[tier] += 1

    def _demote(self, key: str, tier: str) -> bool:
        """Re-encode a tier's copy with the next codec of the ladder; False when none is left."""
        entry = self._entries[key]
        codec = entry.ram_codec if tier == "ram" else entry.disk_codec
        rungs = self.ladder[self.ladder.index(codec) + 1 :] if codec in self.ladder else ()
        if not rungs:
            return False
        old = entry.ram if tier == "ram" else self.disk.read(key)
        if old is None:
            return False  # the file went bad or away: it is evicted instead
        snap = old if isinstance(old, Snapshot) else Snapshot.from_bytes(old)
        blob = Snapshot.from_state(snap.decode(), snap.fingerprint, rungs[0], model_name=snap.model_name,
                                   meta=snap.meta).to_bytes()
        if tier == "ram":
            self.used += len(blob) - len(entry.ram)
            entry.ram, entry.ram_codec = blob, rungs[0]
            self.ram_policy.on_access(key, len(blob), entry.cost)
        else:
            self.disk.write(key, blob)
            self.disk_used += len(blob) - entry.disk_size
            entry.disk_size, entry.disk_codec = len(blob), rungs[0]
            self.disk_policy.on_access(key, len(blob), entry.cost)
        self._n.demotions[f"{tier}:{codec}->{rungs[0]}"] += 1
        return True

    def _evict(self, key: str, tier: str) -> None:
        """Take an entry out of one tier (the policy was told already); forget it when in neither."""
        entry = self._entries[key]
        if tier == "ram":
            self.used -= len(entry.ram)
            entry.ram = None
        else:
            self.disk.delete(key)
            self.disk_used -= entry.disk_size
            entry.disk_size = 0
        if entry.ram is None and not entry.disk_size:
            self._unindex(key)

    def _forget(self, key: str) -> None:
        entry = self._entries[key]
        if entry.ram is not None:
            self.ram_policy.on_remove(key)
            self._evict(key, "ram")
        if key in self._entries and entry.disk_size:
            self.disk_policy.on_remove(key)
            self._evict(key, "disk")

    def delete(self, key: str) -> None:
        with self._lock:
            if key not in self._entries:
                raise KVCPUError(f"no entry {key!r} in the store")
            self._forget(key)

    # -- reading -----------------------------------------------------------------------------

    def get(self, key: str) -> Snapshot:
        """The snapshot under `key`, verified (checksum); from disk it is cached in RAM."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                raise KVCPUError(f"no entry {key!r} in the store")
            if entry.ram is not None:
                self.ram_policy.on_access(key, len(entry.ram), entry.cost)
                blob = entry.ram
            else:
                snap = self.disk.read(key)
                if snap is None:  # corrupt (now quarantined) or removed by another process
                    self.disk_policy.on_remove(key)
                    self._evict(key, "disk")
                    raise KVCPUError(f"entry {key!r} could not be read back from disk; it was dropped")
                self.disk_policy.on_access(key, entry.disk_size, entry.cost)
                blob = snap.to_bytes()
                if len(blob) <= self.budget:
                    self._to_ram(key, entry, blob, snap.packed.codec)
                return snap
        return Snapshot.from_bytes(blob)

    def longest_prefix(self, tokens: Sequence[int], fingerprint: str) -> Match | None:
        """The entry sharing the longest prefix with `tokens`, in time proportional to the
        prompt's length in blocks; an entry all of whose tokens match counts whole."""
        tokens = np.asarray(tokens, dtype=np.int32)
        with self._lock:
            if self.disk is not None and self.disk.changed():
                self._load_disk_index()  # another process wrote or removed entries
            self._n.lookups += 1
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
            self._n.hits += 1
            return best

    # -- reporting ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def entries(self) -> list[dict]:
        """One row per entry: key, tokens, where it is, its codec and bytes per tier."""
        with self._lock:
            return [{"key": k, "tokens": len(e.tokens), "in_ram": e.ram is not None, "on_disk": bool(e.disk_size),
                     "ram_bytes": len(e.ram) if e.ram is not None else 0, "disk_bytes": e.disk_size,
                     "codec": e.ram_codec or e.disk_codec} for k, e in self._entries.items()]

    def gc(self, verify: bool = False) -> dict:
        """Rescan the directory (removing temporary files of dead writers, quarantining unreadable
        files), enforce the disk budget, and with verify=True read every file in full."""
        if self.disk is None:
            raise KVCPUError("gc needs a disk tier")
        with self._lock:
            self._load_disk_index()
            bad = 0
            if verify:
                for key in [k for k, e in self._entries.items() if e.disk_size]:
                    if self.disk.read(key) is None:
                        self.disk_policy.on_remove(key)
                        self._evict(key, "disk")
                        bad += 1
            return {"entries": len(self._entries), "disk_bytes": self.disk_used, "dropped_unreadable": bad,
                    "quarantined": self.disk.quarantined}

    def stats(self) -> dict:
        with self._lock:
            n = self._n
            return {"entries": len(self._entries), "ram_bytes": self.used, "budget_bytes": self.budget,
                    "disk_bytes": self.disk_used,
                    "disk_budget_bytes": self.disk_budget if self.disk is not None else 0,
                    "policy": self.policy_name, "lookups": n.lookups, "hits": n.hits,
                    "hit_ratio": n.hits / max(n.lookups, 1), "puts": n.puts, "evictions": dict(n.evictions),
                    "demotions": dict(n.demotions), "disk_errors": n.disk_errors,
                    "quarantined": self.disk.quarantined if self.disk is not None else 0}

    def close(self) -> None:
        """Forget the RAM tier; with a disk tier, add this process's counters to its totals."""
        with self._lock:
            if self.disk is not None and self.disk._lock_fd is not None:
                n = self._n
                self.disk.add_counters({"lookups": n.lookups, "hits": n.hits, "puts": n.puts,
                                        "evictions": dict(n.evictions), "demotions": dict(n.demotions),
                                        "disk_errors": n.disk_errors})
            self._entries.clear()
            self._prefix.clear()
            self.used = self.disk_used = 0
            if self.disk is not None:
                self.disk.close()

    def __enter__(self) -> KVStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
