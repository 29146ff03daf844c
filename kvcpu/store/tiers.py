"""A tier of the store: where entries' bytes live, under a byte budget, in its policy's order.

Every tier has the same small face: `add`, `fetch`, `drop`, `resize`, `holds`, `touch`, plus
`used`, `budget` and `policy` (the way LMCache's storage backends are built). A subclass only
says how bytes are kept (`_write`, `_read`, `_remove`); the byte accounting and the policy's
bookkeeping are here, and the eviction loop that walks the tiers in order is the store's.
Shared bases are held without a policy (`ordered=False`): they leave with their last dependent.
"""

from __future__ import annotations

from collections.abc import Hashable

from .policies import make_policy


class Tier:
    """Entries' bytes under a budget; None for a tier that evicts on its own (Redis)."""

    name = "tier"

    def __init__(self, budget: int | None, policy: str = "lru"):
        self.budget = budget
        self.policy = make_policy(policy, budget) if budget is not None else None
        self.used = 0
        self.sizes: dict[str, int] = {}
        self.codecs: dict[str, str] = {}
        self.ordered: set[str] = set()  # keys the policy orders (not shared bases)

    # -- how bytes are kept: each kind of tier says -------------------------------------------

    def _write(self, key: str, blob) -> None:
        raise NotImplementedError

    def _read(self, key: str) -> bytes | None:
        raise NotImplementedError

    def _remove(self, key: str) -> None:
        raise NotImplementedError

    # -- what the store calls -----------------------------------------------------------------

    def holds(self, key: str) -> bool:
        return key in self.sizes

    def add(self, key: str, blob, codec: str, cost: float = 1.0, owner: Hashable | None = None,
            ordered: bool = True) -> None:
        """Keep an entry's bytes and tell the policy."""
        self._write(key, blob)
        self.register(key, len(blob), codec, cost, owner, ordered)

    def register(self, key: str, size: int, codec: str, cost: float = 1.0, owner: Hashable | None = None,
                 ordered: bool = True) -> None:
        """Account bytes that are here already (a file written before, or found on disk)."""
        self.sizes[key], self.codecs[key] = size, codec
        self.used += size
        if ordered and self.policy is not None:
            self.ordered.add(key)
            if owner is not None:
                self.policy.on_owner(key, owner)
            self.policy.on_insert(key, size, cost)

    def fetch(self, key: str) -> bytes | None:
        """The entry's bytes, or None when they are gone or unreadable."""
        return self._read(key) if key in self.sizes else None

    def resize(self, key: str, blob, codec: str) -> None:
        """Replace an entry's bytes with a new form of the same tokens (demoted, or cut to a part)."""
        self._write(key, blob)
        self.used += len(blob) - self.sizes[key]
        self.sizes[key], self.codecs[key] = len(blob), codec
        if key in self.ordered:
            self.policy.on_resize(key, len(blob))

    def drop(self, key: str, keep_bytes: bool = False) -> None:
        """Forget an entry here (its bytes too, unless another writer just replaced them)."""
        if key not in self.sizes:
            return
        if not keep_bytes:
            self._remove(key)
        self.used -= self.sizes.pop(key)
        self.codecs.pop(key, None)
        if key in self.ordered:
            self.ordered.discard(key)
            self.policy.on_remove(key)

    def touch(self, key: str, cost: float, owner: Hashable | None = None) -> None:
        """A hit: the policy hears of it."""
        if key in self.ordered:
            if owner is not None:
                self.policy.on_owner(key, owner)
            self.policy.on_access(key, self.sizes[key], cost)

    def over_budget(self) -> bool:
        return self.budget is not None and self.used > self.budget and bool(self.ordered)


class RamTier(Tier):
    """Serialized snapshots in this process's memory."""

    name = "ram"

    def __init__(self, budget: int, policy: str = "lru"):
        super().__init__(budget, policy)
        self.blobs: dict[str, bytes] = {}
        self.reserved = 0  # bytes of states in memory on their way into the store (KVStore.hold_ram)

    def over_budget(self) -> bool:
        return self.used + self.reserved > self.budget and bool(self.ordered)

    def _write(self, key: str, blob) -> None:
        self.blobs[key] = blob

    def _read(self, key: str) -> bytes | None:
        return self.blobs.get(key)

    def _remove(self, key: str) -> None:
        self.blobs.pop(key, None)
