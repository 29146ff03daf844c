"""Recency queues: LRU, and FIFO (LRU that ignores hits)."""

from __future__ import annotations

from collections import OrderedDict

from .base import Policy


class LRU(Policy):
    """Least recently used."""

    name = "lru"

    def __init__(self, capacity_bytes: int):
        super().__init__(capacity_bytes)
        self.order: OrderedDict = OrderedDict()

    def on_insert(self, key, size, cost):
        self.order[key] = None

    def on_access(self, key, size, cost):
        self.order.move_to_end(key)

    def on_resize(self, key, size):
        self.order.move_to_end(key)

    def on_remove(self, key):
        self.order.pop(key, None)

    def victim(self):
        return next(iter(self.order))


class FIFO(LRU):
    """First in, first out: hits do not reorder."""

    name = "fifo"

    def on_access(self, key, size, cost):
        pass
