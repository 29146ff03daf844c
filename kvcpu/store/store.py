"""KVStore: snapshots under byte budgets, found by the longest stored prefix of a prompt.

The tiers, in order: RAM, then (with a directory) disk, each a `Tier` with its own budget and
policy; beside them a remote tier (Redis or Valkey) that hosts share and that evicts by itself.
With a disk every entry is written through, so entries outlive the process, and RAM caches the
hot ones. The store owns the index, the one loop that keeps each tier within its budget (an
entry first goes down the demotion ladder, re-encoded smaller, and only then leaves the tier;
it is forgotten when no tier holds it), and the carrying out of what `Sharing` plans.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np

from ..codecs import refuse_merged_cells
from ..errors import KVCPUError
from ..snapshot import Snapshot
from . import report
from .disk import DiskTier, StoreDiskError
from .index import Entry, Match, PrefixIndex
from .keys import block_hashes
from .remote import RemoteTier
from .sharing import SharedSnapshot, Sharing
from .sync import gc, prefetch, sync_from_disk
from .tiers import RamTier, Tier

log = logging.getLogger(__name__)

DEFAULT_LADDER = ("f16", "int8", "int4-rot")
__all__ = ["DEFAULT_LADDER", "KVStore", "Match"]


class KVStore:
    """Snapshots of one or more models in RAM, on disk and on a shared remote. Thread-safe."""

    def __init__(self, budget_bytes: int, policy: str = "reuse-rate", disk_dir=None,
                 disk_budget_bytes: int | None = None, codec: str = "int8",
                 ladder: Sequence[str] = DEFAULT_LADDER, share: bool = True, remote: str | RemoteTier | None = None,
                 remote_namespace: str = "kvcpu", remote_ttl_s: int | None = None):
        if budget_bytes <= 0:
            raise KVCPUError(f"budget_bytes must be positive, not {budget_bytes}")
        for name in (codec, *ladder):
            refuse_merged_cells(name)
        self.codec, self.ladder, self.policy_name, self.share = codec, tuple(ladder), policy, share
        self.ram = RamTier(int(budget_bytes), policy)
        self.disk = DiskTier(disk_dir, disk_budget_bytes, policy) if disk_dir is not None else None
        self.remote = RemoteTier(remote, remote_namespace, remote_ttl_s) if isinstance(remote, str) else remote
        self.tiers: list[Tier] = [t for t in (self.ram, self.disk) if t is not None]
        self.index = PrefixIndex()
        self.sharing = Sharing(self)
        self._n = report.Counters()
        self._lock = threading.RLock()
        self.holding_bases = False  # while the index is rebuilt: bases stay until it is whole
        if self.disk is not None:
            sync_from_disk(self)

    @property
    def budget(self) -> int:
        return self.ram.budget

    def hold_ram(self, nbytes: int) -> None:
        """Count bytes held for the store (a state not yet encoded) against the RAM budget."""
        with self._lock:
            self.ram.reserved += nbytes
            self.enforce(self.ram)

    def release_ram(self, nbytes: int) -> None:
        with self._lock:
            self.ram.reserved -= nbytes

    @property
    def directory(self):  # the disk tier's directory, or None for a store in RAM alone
        return self.disk.root if self.disk is not None else None

    @property
    def used(self) -> int:
        return self.ram.used

    # -- the index and the tiers -----------------------------------------------------------------

    def unindex(self, key: str) -> None:
        """Forget an entry; a shared base goes with its last dependent."""
        entry = self.index.remove(key)
        base = self.index.get(entry.base) if entry.base else None
        if base is not None:
            base.dependents -= 1
            if base.dependents <= 0 and not self.holding_bases:
                self.drop_everywhere(entry.base)

    def drop_everywhere(self, key: str) -> None:
        for tier in self.tiers:
            tier.drop(key)
        self.unindex(key)

    def forget(self, key: str, keep_file: bool = False) -> None:
        """Take an entry out of every tier and the index (keep_file: its file was just replaced
        by a new one under the same key, or went away)."""
        for tier in self.tiers:
            tier.drop(key, keep_bytes=keep_file and tier is self.disk)
        if key in self.index:
            self.unindex(key)

    def unindex_if_gone(self, key: str) -> None:
        if key in self.index and not any(t.holds(key) for t in self.tiers):
            self.unindex(key)

    def enforce(self, tier: Tier, demote: bool = True) -> None:
        """The one eviction loop: while over budget, demote the policy's victim down the ladder,
        or when it is at the bottom, evict it from this tier. Without `demote` (opening, syncing
        and tidying a directory) entries are only evicted whole, never rewritten: that needs no
        free space, and a look at a store never lowers the quality of what it holds."""
        while tier.over_budget():
            victim = tier.policy.victim()
            if demote and self._demote(tier, victim):
                continue
            tier.drop(victim)
            self._n.evictions[tier.name] += 1
            self.unindex_if_gone(victim)

    def _demote(self, tier: Tier, key: str) -> bool:
        codec = tier.codecs[key]
        rungs = self.ladder[self.ladder.index(codec) + 1 :] if codec in self.ladder else ()
        old = tier.fetch(key) if rungs else None
        if old is None:
            return False  # at the bottom of the ladder, or the file went bad or away: evicted instead
        snap = Snapshot.from_bytes(old)
        blob = Snapshot.from_state(snap.decode(), snap.fingerprint, rungs[0], model_name=snap.model_name,
                                   meta=snap.meta).to_bytes()
        tier.resize(key, blob, rungs[0])
        self._n.demotions[f"{tier.name}:{codec}->{rungs[0]}"] += 1
        log.info("demoted %s in %s: %s -> %s (%d -> %d bytes), to keep the tier in its budget", key, tier.name,
                 codec, rungs[0], len(old), len(blob))
        return True

    @contextmanager
    def _dir_locked(self):
        """The directory's lock across processes, with the index brought up to date under it:
        whatever changes the directory decides from what is on disk now."""
        if self.disk is None:
            yield
            return
        with self.disk.locked():
            if self.disk.changed():
                sync_from_disk(self)
            yield

    # -- writing ---------------------------------------------------------------------------------

    def put(self, snapshot: Snapshot, cost: float = 1.0, supersede: bool = True, owner=None) -> str:
        """Keep a snapshot (replacing one with the same tokens); returns its key.

        `cost` is what a hit saves, in prefill seconds: cost-aware policies keep what saves most
        per byte. With supersede, entries whose tokens are a prefix of this one's are dropped
        once this one is durable: it restores their prefixes too. `owner` says who asks (a
        user, a tenant): reuse-rate and the hybrid take an owner's move to another conversation
        as the end of its last. With a disk the snapshot is written through, under the
        directory's lock, from a fresh view of it; if a write fails (disk full) nothing the put
        began is left half done, what it would supersede stays, the new entry is kept whole in
        RAM, and StoreDiskError says why. With a remote tier the whole snapshot goes there too.
        """
        if snapshot.tokens is None:
            raise KVCPUError("a snapshot without token ids cannot be found by prefix; it has no key")
        refuse_merged_cells(snapshot.packed.codec)
        entry = Entry.of(snapshot.tokens, snapshot.fingerprint, cost=cost, owner=owner)  # its hash chain, once
        key, whole = entry.key, snapshot.to_bytes()  # its one serialization
        try:
            return self._put(snapshot, entry, key, whole, supersede)
        finally:
            if self.remote is not None:
                self.remote.put(key, entry.tokens, entry.fingerprint, whole, entry.hashes)

    def _put(self, snapshot: Snapshot, entry: Entry, key: str, whole: bytes, supersede: bool) -> str:
        codec = snapshot.packed.codec
        with self._lock, self._dir_locked():
            if len(whole) > self.ram.budget and self.disk is None:
                raise KVCPUError(f"a {len(whole):,}-byte snapshot does not fit a {self.ram.budget:,}-byte budget")
            if key in self.index and self.index[key].shared_base:
                return key  # these exact tokens are a shared base already: it serves them
            superseded = self.index.prefixes_of(entry) if supersede else []
            plan, blob = None, whole
            try:
                if self.share:
                    plan, blob = self.sharing.share(snapshot, entry, whole, exclude=set(superseded) | {key})
                if self.disk is not None:
                    self.disk.write(key, blob)  # durable before anything it supersedes goes
            except StoreDiskError:
                self._n.disk_errors += 1
                if plan is not None:
                    self.sharing.release(plan.base)
                self.forget(key, keep_file=True)
                self._keep(key, entry, whole, codec, on_disk=False)
                raise
            self.forget(key, keep_file=True)  # the same tokens again: its file was just replaced
            for old in superseded:  # the new one is durable now: what it supersedes goes before it
                if old in self.index:  # takes its place, so that the budget does not evict another for it
                    self.forget(old)
            if plan is not None:
                entry.base, entry.base_tokens = plan.base, plan.m
            self._keep(key, entry, blob, codec, on_disk=self.disk is not None)
            self._n.puts += 1
        return key

    def _keep(self, key: str, entry: Entry, blob: bytes, codec: str, on_disk: bool) -> None:
        """Index a new entry: on disk when its file was written (first, so that a RAM eviction
        cannot forget it), in RAM when it fits."""
        self.index.add(key, entry)
        if on_disk:
            self.disk.register(key, len(blob), codec, entry.cost, entry.owner)
            self.enforce(self.disk)
        if key in self.index and len(blob) <= self.ram.budget:
            self.ram.add(key, blob, codec, entry.cost, entry.owner)
            self.enforce(self.ram)

    def put_state(self, state, fingerprint: str, cost: float = 1.0, owner=None, **snapshot_kw) -> str:
        """Encode a KVState with the store's codec and keep it."""
        return self.put(Snapshot.from_state(state, fingerprint, self.codec, **snapshot_kw), cost, owner=owner)

    def delete(self, key: str) -> None:
        """Drop an entry (not a shared base: that goes with its last dependent), here and remotely."""
        with self._lock, self._dir_locked():
            entry = self.index.get(key)
            if entry is None:
                raise KVCPUError(f"no entry {key!r} in the store")
            if entry.shared_base:
                raise KVCPUError(f"entry {key!r} is a prefix that {entry.dependents} entries share; it goes when "
                                 "they do")
            self.forget(key)
        if self.remote is not None:
            self.remote.delete(key)

    # -- reading ---------------------------------------------------------------------------------

    def get(self, key: str, owner=None):
        """The snapshot under `key`, verified (checksum): a Snapshot, or for an entry that
        continues a shared prefix a SharedSnapshot, which decodes to the whole state alike."""
        with self._lock:
            entry = self.index.get(key)
            if entry is None:
                raise KVCPUError(f"no entry {key!r} in the store")
            if owner is not None:
                entry.owner = owner
            own = self.read_own(key)
            if entry.base is None:
                return own
            return SharedSnapshot(self.read_own(entry.base), own, entry.tokens)

    def read_own(self, key: str, touch: bool = True) -> Snapshot:
        """One entry's own snapshot, from RAM or else from disk (then cached in RAM)."""
        entry = self.index[key]
        blob = self.ram.fetch(key)
        if blob is not None:
            if touch:
                self.ram.touch(key, entry.cost, entry.owner)
            # Bytes the store made, or verified on their way in (disk, remote): hashing them again
            # at every read cost a fifth of a 2,000-token f16 restore (the turn suite).
            return Snapshot.from_bytes(blob, verify=False)
        found = self.disk.read(key) if self.disk is not None and self.disk.holds(key) else None
        if found is None:  # corrupt (now quarantined) or removed by another process
            if self.disk is not None and self.disk.holds(key):
                self.disk.drop(key, keep_bytes=True)
                if entry.shared_base:
                    self.drop_everywhere(key)
                else:
                    self.unindex_if_gone(key)
            raise KVCPUError(f"entry {key!r} could not be read back from disk; it was dropped")
        blob, snap = found  # the bytes read are kept as they are, not serialized again
        if touch:
            self.disk.touch(key, entry.cost, entry.owner)
        if len(blob) <= self.ram.budget:
            self.ram.add(key, blob, snap.packed.codec, entry.cost, entry.owner, ordered=not entry.shared_base)
            self.enforce(self.ram)
        return snap

    def prefetch(self, fingerprint: str, max_bytes: int) -> int:
        """Read this model's newest entries from disk into RAM, up to max_bytes (sync.prefetch)."""
        with self._lock:
            return prefetch(self, fingerprint, max_bytes) if self.disk is not None else 0

    def longest_prefix(self, tokens: Sequence[int], fingerprint: str, wait: bool = True) -> Match | None:
        """The entry sharing the longest prefix with `tokens`, here or (when longer) on the
        remote tier, in time proportional to the prompt's length in blocks. wait=False answers
        None at once while another thread holds the store (a put writing and fsyncing)."""
        tokens = np.asarray(tokens, dtype=np.int32)
        hashes = list(block_hashes(tokens, fingerprint))
        if not self._lock.acquire(blocking=wait):
            return None
        try:
            if self.disk is not None and self.disk.changed():
                sync_from_disk(self)  # another process wrote or removed entries
            self._n.lookups += 1
            best = self.index.longest(tokens, hashes, fingerprint)
            if self.remote is not None and (best is None or best.n_tokens < len(tokens)):
                found = self.remote.longest_prefix(tokens, fingerprint, best.n_tokens if best else 0, hashes)
                best = self._adopt(*found) if found is not None else best
            if best is not None:
                self._n.hits += 1
            return best
        finally:
            self._lock.release()

    def _adopt(self, key: str, n_tokens: int, snapshot: Snapshot, blob: bytes) -> Match | None:
        """Keep what another host stored (verified by the remote tier): in RAM, where the turn
        about to restore it reads it at once; on disk only when it does not fit RAM."""
        if key not in self.index:
            entry = Entry.of(snapshot.tokens, snapshot.fingerprint)
            if len(blob) <= self.ram.budget:
                self._keep(key, entry, blob, snapshot.packed.codec, on_disk=False)
            elif self.disk is not None:
                try:
                    self.disk.write(key, blob)
                    self._keep(key, entry, blob, snapshot.packed.codec, on_disk=True)
                except StoreDiskError as exc:
                    log.warning("an entry from the remote tier could not be kept here: %s", exc)
        if key not in self.index:
            return None
        self._n.remote_hits += 1
        return Match(key, n_tokens, len(snapshot.tokens))

    def lookup_exact(self, tokens: Sequence[int], fingerprint: str) -> str | None:
        """The key of the entry holding exactly these tokens, if any (not counted as a lookup)."""
        with self._lock:
            return self.index.exact(tokens, fingerprint)

    # -- reporting -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def keys(self) -> list[str]:
        with self._lock:
            return list(self.index)

    def is_shared(self, key: str) -> bool:
        """Whether an entry is a shared base (which leaves with its last dependent)."""
        with self._lock:
            return key in self.index and self.index[key].shared_base

    def stored_bytes(self, key: str) -> int:
        """What an entry takes: its RAM copy's bytes, or else its file's."""
        with self._lock:
            return self.ram.sizes.get(key) or (self.disk.sizes.get(key, 0) if self.disk is not None else 0)

    def entries(self) -> list[dict]:
        """One row per entry: key, tokens, where it is, its codec and bytes per tier."""
        with self._lock:
            return report.entries(self)

    def gc(self, verify: bool = False) -> dict:
        """Tidy the directory (sync.gc): leftovers, unreadable files, the budget; verify reads all."""
        with self._lock:
            return gc(self, verify)

    def stats(self) -> dict:
        """Entries, bytes and budgets per tier, lookups and hits, evictions, demotions, sharing."""
        with self._lock:
            return report.stats(self)

    def close(self) -> None:
        """Forget the RAM tier; with a disk tier, add this process's counters to its totals."""
        with self._lock:
            if self.disk is not None and self.disk._lock_fd is not None:
                self.disk.add_counters(self._n.totals())
                self.disk.close()
            self.index = PrefixIndex()  # nothing is held any more
            self.sharing = Sharing(self)
            self.ram = RamTier(self.ram.budget)
            self.tiers = [self.ram]
            if self.remote is not None:
                self.remote.close()

    def __enter__(self) -> KVStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
