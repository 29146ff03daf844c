"""What every eviction policy is: a small class that orders resident keys.

A policy only orders keys. Whoever holds the bytes (KVStore, or `simulate`) keeps the byte
accounting and runs the eviction loop: insert, then while over budget, ask `victim()`, remove
that key, and tell the policy `on_remove`.
"""

from __future__ import annotations

from collections.abc import Hashable

Key = Hashable


class Policy:
    """Orders resident keys for eviction. Subclasses keep their own bookkeeping."""

    name = "base"

    def __init__(self, capacity_bytes: int):
        self.capacity = capacity_bytes

    def on_insert(self, key: Key, size: int, cost: float) -> None:
        raise NotImplementedError

    def on_access(self, key: Key, size: int, cost: float) -> None:
        """A hit; size and cost are the entry's current ones (a conversation grows)."""
        raise NotImplementedError

    def on_remove(self, key: Key) -> None:
        raise NotImplementedError

    def on_resize(self, key: Key, size: int) -> None:
        """An entry re-encoded to a new size: demoted down the ladder under pressure, or cut to
        a shared base's tail. It goes back to the far end of the eviction order, as if just
        placed, so that every entry steps down the ladder before any is dropped; but it is not
        a use: frequencies, ghost hits and learned statistics stay as they were."""
        raise NotImplementedError

    def on_owner(self, key: Key, owner: Hashable) -> None:
        """The application's word on who asks for key (a user, a tenant), just before that
        request's on_insert or on_access. A hint: policies with no use for it ignore it."""

    def victim(self) -> Key:
        """The key to evict next; the caller removes it and calls on_remove."""
        raise NotImplementedError
