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
from collections.abc import Hashable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from ..codecs import merges_cells
from ..errors import KVCPUError
from ..snapshot import Snapshot
from ..splice import tail
from .disk import DiskTier, StoreDiskError
from .disk_index import DiskIndex
from .keys import BLOCK_TOKENS, block_hashes, entry_key, seed_hash, tail_key
from .policies import make_policy
from .remote import RemoteTier
from .sharing import PrefixSharing, SharedSnapshot

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
    base: str | None = None  # the shared base this entry's cells continue (sharing.py)
    base_tokens: int = 0
    dependents: int = 0  # for a base: the entries that continue it; bases leave with the last
    owner: Hashable | None = None  # who asked for it last, when the application says (a policy hint)
    shared_base: bool = False  # a shared prefix: no policy orders it; it leaves with its last dependent

    @property
    def is_base(self) -> bool:
        return self.shared_base


@dataclass
class _Counters:
    lookups: int = 0
    hits: int = 0
    puts: int = 0
    evictions: dict = field(default_factory=lambda: defaultdict(int))
    demotions: dict = field(default_factory=lambda: defaultdict(int))
    disk_errors: int = 0
    remote_hits: int = 0


class KVStore(PrefixSharing, DiskIndex):
    """Snapshots of one or more models under RAM and disk byte budgets. Thread-safe."""

    def __init__(self, budget_bytes: int, policy: str = "hybrid", disk_dir=None,
                 disk_budget_bytes: int | None = None, codec: str = "int8",
                 ladder: Sequence[str] = DEFAULT_LADDER, share: bool = True, remote: str | RemoteTier | None = None,
                 remote_namespace: str = "kvcpu", remote_ttl_s: int | None = None):
        if budget_bytes <= 0:
            raise KVCPUError(f"budget_bytes must be positive, not {budget_bytes}")
        for name in (codec, *ladder):
            _refuse_merged_cells(name)
        self.budget = int(budget_bytes)
        self.disk = DiskTier(disk_dir) if disk_dir is not None else None
        self.remote = RemoteTier(remote, remote_namespace, remote_ttl_s) if isinstance(remote, str) else remote
        # Without a disk budget, half of what the entries and the free space beside them come to:
        # a store never fills its disk by default.
        self.disk_budget = int(disk_budget_bytes or (self.disk.default_budget() if self.disk else 1 << 62))
        self.codec = codec
        self.ladder = tuple(ladder)
        self.policy_name = policy
        self.ram_policy = make_policy(policy, self.budget)
        self.disk_policy = make_policy(policy, self.disk_budget)
        self.share = share
        self.used = self.disk_used = 0
        self._leaves = {"ram": 0, "disk": 0}  # entries the policies order (bases are not among them)
        self._entries: dict[str, _Entry] = {}
        self._prefix: dict[int, set[str]] = defaultdict(set)  # block hash -> entries holding that prefix
        self._n = _Counters()
        self._lock = threading.RLock()
        self._holding_bases = False  # while the index is reloaded: bases stay until it is whole
        if self.disk is not None:
            self._load_disk_index()

    # -- the index ---------------------------------------------------------------------------

    @staticmethod
    def _new_entry(tokens: np.ndarray, fingerprint: str, cost: float, **kw) -> _Entry:
        return _Entry(tokens, fingerprint, cost, **kw)

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
        base = self._entries.get(entry.base) if entry.base else None
        if base is not None:
            base.dependents -= 1
            if base.dependents <= 0 and not self._holding_bases:  # its last dependent is gone: so is the base
                self._drop_everywhere(entry.base)

    def _drop_everywhere(self, key: str) -> None:
        entry = self._entries[key]
        if entry.ram is not None:
            self.used -= len(entry.ram)
            entry.ram = None
        if entry.disk_size:
            self.disk.delete(key)
            self.disk_used -= entry.disk_size
            entry.disk_size = 0
        self._unindex(key)

    @contextmanager
    def _dir_locked(self):
        """The directory's lock across processes, with the index refreshed under it: whatever
        changes the directory decides from what is on disk now, not from a stale index."""
        if self.disk is None:
            yield
            return
        with self.disk.locked():
            if self.disk.changed():
                self._load_disk_index()
            yield

    # -- writing -----------------------------------------------------------------------------

    def put(self, snapshot: Snapshot, cost: float = 1.0, supersede: bool = True, owner=None) -> str:
        """Keep a snapshot (replacing one with the same tokens); returns its key.

        `cost` is what a hit saves, in prefill seconds: cost-aware policies keep what saves most
        per byte. With supersede, entries whose tokens are a prefix of this one's are dropped
        once this one is durable: it restores their prefixes too (to a whole block), as a
        conversation's new turn replaces its last. `owner` says who asks (a user, a tenant),
        where the application knows: reuse-rate and the hybrid take an owner's move to another
        conversation as the end of its last. With a disk tier the snapshot is written through,
        under the directory's lock and from a fresh view of it; if a write fails (disk full),
        nothing the put began is left half done, the entries it would supersede stay, the new
        one is kept whole in RAM, and StoreDiskError says why. With a remote tier, the whole
        snapshot is written there too, for every host (a remote that is down is a warning).
        """
        try:
            return self._put(snapshot, cost, supersede, owner)
        finally:
            if self.remote is not None and snapshot.tokens is not None:
                tokens = np.asarray(snapshot.tokens, dtype=np.int32)
                self.remote.put(entry_key(tokens, snapshot.fingerprint), tokens, snapshot.fingerprint,
                                snapshot.to_bytes())

    def _put(self, snapshot: Snapshot, cost: float, supersede: bool, owner) -> str:
        if snapshot.tokens is None:
            raise KVCPUError("a snapshot without token ids cannot be found by prefix; it has no key")
        _refuse_merged_cells(snapshot.packed.codec)
        tokens = np.asarray(snapshot.tokens, dtype=np.int32)
        key = entry_key(tokens, snapshot.fingerprint)
        codec = snapshot.packed.codec
        whole = snapshot.to_bytes()
        with self._lock, self._dir_locked():
            if len(whole) > self.budget and self.disk is None:
                raise KVCPUError(f"a {len(whole):,}-byte snapshot does not fit a {self.budget:,}-byte budget")
            if key in self._entries and self._entries[key].is_base:
                return key  # these exact tokens are a shared base already: it serves them
            superseded = self._prefixes_of(tokens, snapshot.fingerprint) if supersede else []
            base, m, blob = None, 0, whole
            try:
                if self.share:
                    base, m, state = self._base_for(tokens, snapshot, exclude=set(superseded) | {key})
                    if base is not None:  # kept as its own part after the shared base
                        blob = snapshot.recode(tail(state, m), meta={**snapshot.meta, "base": base,
                                                                     "base_tokens": m}).to_bytes()
                if self.disk is not None:
                    self._write_file(key, blob)  # durable before anything it supersedes goes
            except StoreDiskError:
                self._n.disk_errors += 1
                if base is not None:
                    self._release_base(base)
                if key in self._entries:
                    self._forget(key, keep_file=True)
                self._keep(key, _Entry(tokens, snapshot.fingerprint, cost, owner=owner), whole, codec, on_disk=False)
                raise
            if key in self._entries:  # the same tokens again: the file was just replaced
                self._forget(key, keep_file=True)
            entry = _Entry(tokens, snapshot.fingerprint, cost, base=base, base_tokens=m, owner=owner)
            self._keep(key, entry, blob, codec, on_disk=self.disk is not None)
            for old in superseded:
                if old in self._entries:
                    self._forget(old)
            self._n.puts += 1
        return key

    def _keep(self, key: str, entry: _Entry, blob: bytes, codec: str, on_disk: bool) -> None:
        """Index a new entry, in RAM when it fits and on disk when its file was written."""
        self._index(key, entry)
        if on_disk:  # first: a RAM eviction of an entry not yet on disk would forget it
            self._on_disk(key, entry, len(blob), codec)
        if key in self._entries and len(blob) <= self.budget:
            self._to_ram(key, entry, blob, codec)

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
        return [k for k in found if len(self._entries[k].tokens) < len(tokens) and not self._entries[k].is_base
                and np.array_equal(self._entries[k].tokens, tokens[: len(self._entries[k].tokens)])]

    def lookup_exact(self, tokens: Sequence[int], fingerprint: str) -> str | None:
        """The key of the entry holding exactly these tokens, if any (not counted as a lookup)."""
        key = entry_key(np.asarray(tokens, dtype=np.int32), fingerprint)
        return key if key in self._entries else None

    def put_state(self, state, fingerprint: str, cost: float = 1.0, owner=None, **snapshot_kw) -> str:
        """Encode a KVState with the store's codec and keep it."""
        return self.put(Snapshot.from_state(state, fingerprint, self.codec, **snapshot_kw), cost, owner=owner)

    def _to_ram(self, key: str, entry: _Entry, blob: bytes, codec: str) -> None:
        entry.ram, entry.ram_codec = blob, codec
        self.used += len(blob)
        self._leaves["ram"] += 1
        self._tell_owner(self.ram_policy, key, entry)
        self.ram_policy.on_insert(key, len(blob), entry.cost)
        self._enforce(self.ram_policy, "ram")

    def _write_file(self, key: str, blob: bytes) -> None:
        self.disk.write(key, blob)

    def _on_disk(self, key: str, entry: _Entry, size: int, codec: str) -> None:
        """Account an entry's file, written already, to the disk tier and its policy."""
        entry.disk_size, entry.disk_codec = size, codec
        self.disk_used += size
        self._leaves["disk"] += 1
        self._tell_owner(self.disk_policy, key, entry)
        self.disk_policy.on_insert(key, size, entry.cost)
        self._enforce(self.disk_policy, "disk")

    @staticmethod
    def _tell_owner(policy, key: str, entry: _Entry) -> None:
        if entry.owner is not None:
            policy.on_owner(key, entry.owner)

    def _enforce(self, policy, tier: str) -> None:
        budget = self.budget if tier == "ram" else self.disk_budget
        while (self.used if tier == "ram" else self.disk_used) > budget and self._leaves[tier]:
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
        if tier == "ram":
            old = entry.ram
        else:
            found = self.disk.read(key)
            old = found[0] if found else None
        if old is None:
            return False  # the file went bad or away: it is evicted instead
        snap = Snapshot.from_bytes(old)
        blob = Snapshot.from_state(snap.decode(), snap.fingerprint, rungs[0], model_name=snap.model_name,
                                   meta=snap.meta).to_bytes()
        if tier == "ram":
            self.used += len(blob) - len(entry.ram)
            entry.ram, entry.ram_codec = blob, rungs[0]
            self.ram_policy.on_resize(key, len(blob))
        else:
            self.disk.write(key, blob)
            self.disk_used += len(blob) - entry.disk_size
            entry.disk_size, entry.disk_codec = len(blob), rungs[0]
            self.disk_policy.on_resize(key, len(blob))
        self._n.demotions[f"{tier}:{codec}->{rungs[0]}"] += 1
        return True

    def _evict(self, key: str, tier: str) -> None:
        """Take an entry out of one tier (the policy was told already); forget it when in neither."""
        entry = self._entries[key]
        self._leaves[tier] -= 1
        if tier == "ram":
            self.used -= len(entry.ram)
            entry.ram = None
        else:
            self.disk.delete(key)
            self.disk_used -= entry.disk_size
            entry.disk_size = 0
        if entry.ram is None and not entry.disk_size:
            self._unindex(key)

    def _forget(self, key: str, keep_file: bool = False) -> None:
        """Take an entry out of both tiers and the index (keep_file: its file stays, because a
        new one under the same key just replaced it, or a write failed)."""
        entry = self._entries[key]
        if entry.ram is not None:
            self.ram_policy.on_remove(key)
            self._evict(key, "ram")
        if key in self._entries and entry.disk_size:
            self.disk_policy.on_remove(key)
            if keep_file:
                self._leaves["disk"] -= 1
                self.disk_used -= entry.disk_size
                entry.disk_size = 0
            else:
                self._evict(key, "disk")
        if key in self._entries and keep_file:
            self._unindex(key)

    def delete(self, key: str) -> None:
        """Drop an entry (not a shared base: that goes with its last dependent)."""
        with self._lock, self._dir_locked():
            if key not in self._entries:
                raise KVCPUError(f"no entry {key!r} in the store")
            if self._entries[key].is_base:
                raise KVCPUError(f"entry {key!r} is a prefix that {self._entries[key].dependents} entries share; "
                                 "it goes when they do")
            self._forget(key)
        if self.remote is not None:
            self.remote.delete(key)

    # -- reading -----------------------------------------------------------------------------

    def get(self, key: str, owner=None):
        """The snapshot under `key`, verified (checksum): a Snapshot, or for an entry that
        continues a shared prefix a SharedSnapshot, which decodes to the whole state alike.
        `owner` says who asks, as for put."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                raise KVCPUError(f"no entry {key!r} in the store")
            if owner is not None:
                entry.owner = owner
            own = self._read(key)
            if entry.base is None:
                return own
            return SharedSnapshot(self._read(entry.base), own, entry.tokens)

    def _read(self, key: str) -> Snapshot:
        """One entry's own snapshot, from RAM or else from disk (then cached in RAM)."""
        entry = self._entries[key]
        policy = not entry.is_base
        if entry.ram is not None:
            if policy:
                self._tell_owner(self.ram_policy, key, entry)
                self.ram_policy.on_access(key, len(entry.ram), entry.cost)
            return Snapshot.from_bytes(entry.ram)
        found = self.disk.read(key) if entry.disk_size else None
        if found is None:  # corrupt (now quarantined) or removed by another process
            if entry.disk_size:
                if policy:
                    self.disk_policy.on_remove(key)
                    self._evict(key, "disk")
                else:
                    self._drop_everywhere(key)
            raise KVCPUError(f"entry {key!r} could not be read back from disk; it was dropped")
        blob, snap = found  # the bytes read are kept as they are, not serialized again
        if not policy:
            entry.ram, entry.ram_codec = blob, snap.packed.codec
            self.used += len(blob)
        else:
            self._tell_owner(self.disk_policy, key, entry)
            self.disk_policy.on_access(key, entry.disk_size, entry.cost)
            if len(blob) <= self.budget:
                self._to_ram(key, entry, blob, snap.packed.codec)
        return snap

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
            if best is not None and not np.array_equal(self._entries[best.key].tokens[: best.n_tokens],
                                                       tokens[: best.n_tokens]):
                best = None  # hashes may collide; tokens cannot
            if self.remote is not None and (best is None or best.n_tokens < len(tokens)):
                found = self.remote.longest_prefix(tokens, fingerprint, at_least=best.n_tokens if best else 0)
                best = self._adopt(*found) if found is not None else best
            if best is None:
                return None
            self._n.hits += 1
            return best

    def _adopt(self, key: str, n_tokens: int, snapshot: Snapshot, blob: bytes) -> Match | None:
        """Keep what another host stored (verified by the remote tier) here: in RAM, where the
        turn about to restore it reads it at once (the turn's own state goes to disk after it);
        on disk only when it does not fit the RAM budget."""
        if key not in self._entries:
            entry = _Entry(np.asarray(snapshot.tokens, dtype=np.int32), snapshot.fingerprint, 1.0)
            if len(blob) <= self.budget:
                self._keep(key, entry, blob, snapshot.packed.codec, on_disk=False)
            elif self.disk is not None:
                try:
                    self._write_file(key, blob)
                    self._keep(key, entry, blob, snapshot.packed.codec, on_disk=True)
                except StoreDiskError as exc:
                    log.warning("an entry from the remote tier could not be kept here: %s", exc)
        if key not in self._entries:
            return None
        self._n.remote_hits += 1
        return Match(key, n_tokens, len(snapshot.tokens))

    # -- reporting ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def is_shared(self, key: str) -> bool:
        """Whether an entry is a shared base (which leaves with its last dependent)."""
        with self._lock:
            return key in self._entries and self._entries[key].is_base

    def stored_bytes(self, key: str) -> int:
        """What an entry takes: its RAM copy's bytes, or else its file's."""
        with self._lock:
            entry = self._entries[key]
            return len(entry.ram) if entry.ram is not None else entry.disk_size

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def entries(self) -> list[dict]:
        """One row per entry: key, tokens, where it is, its codec and bytes per tier."""
        with self._lock:
            return [{"key": k, "tokens": len(e.tokens), "in_ram": e.ram is not None, "on_disk": bool(e.disk_size),
                     "ram_bytes": len(e.ram) if e.ram is not None else 0, "disk_bytes": e.disk_size,
                     "codec": e.ram_codec or e.disk_codec, "shared_by": e.dependents,
                     "continues": e.base} for k, e in self._entries.items()]

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
                    "shared_bases": sum(e.is_base for e in self._entries.values()),
                    "sharing_saved_bytes": sum(max(len(e.ram or b""), e.disk_size) * (e.dependents - 1)
                                               for e in self._entries.values() if e.is_base),
                    "quarantined": self.disk.quarantined if self.disk is not None else 0,
                    "remote_hits": n.remote_hits,
                    "remote": asdict(self.remote.stats) if self.remote is not None else None}

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
            if self.remote is not None:
                self.remote.close()

    def __enter__(self) -> KVStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _refuse_merged_cells(codec_name: str) -> None:
    """A codec that merges cells (cluster) holds fewer cells than tokens: prefix cuts, shared
    bases and keys all count tokens, so the store refuses it rather than misread it."""
    if merges_cells(codec_name):
        raise KVCPUError(f"codec {codec_name!r} merges cells, so its snapshots cannot be cut at a token; "
                         "the store does not keep them (use it for single snapshots: Snapshot.save)")
