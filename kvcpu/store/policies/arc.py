"""ARC: recency and frequency balanced by ghost lists (Megiddo and Modha, FAST 2003)."""

from __future__ import annotations

from collections import OrderedDict

from .base import Policy


class ARC(Policy):
    """Adaptive Replacement Cache (Megiddo and Modha, 2003), in bytes: a recency list T1 and a
    frequency list T2, with ghost lists B1 and B2 of what each evicted; a hit in a ghost list
    moves the target size p of T1 toward the list that would have kept it."""

    name = "arc"

    def __init__(self, capacity_bytes: int):
        super().__init__(capacity_bytes)
        self.t1: OrderedDict = OrderedDict()  # key -> size
        self.t2: OrderedDict = OrderedDict()
        self.b1: OrderedDict = OrderedDict()
        self.b2: OrderedDict = OrderedDict()
        self.bytes = {"t1": 0, "t2": 0, "b1": 0, "b2": 0}
        self.p = 0.0

    def _put(self, name: str, key, size: int) -> None:
        getattr(self, name)[key] = size
        self.bytes[name] += size

    def _pop(self, name: str, key) -> int:
        size = getattr(self, name).pop(key)
        self.bytes[name] -= size
        return size

    def on_insert(self, key, size, cost):
        if key in self.b1:  # recency would have kept it: grow T1's share
            self.p = min(self.capacity, self.p + max(self.bytes["b2"] / max(self.bytes["b1"], 1), 1) * size)
            self._pop("b1", key)
            self._put("t2", key, size)
        elif key in self.b2:  # frequency would have kept it: shrink T1's share
            self.p = max(0.0, self.p - max(self.bytes["b1"] / max(self.bytes["b2"], 1), 1) * size)
            self._pop("b2", key)
            self._put("t2", key, size)
        else:
            self._put("t1", key, size)

    def on_access(self, key, size, cost):
        self._pop("t1" if key in self.t1 else "t2", key)
        self._put("t2", key, size)

    def on_resize(self, key, size):
        for name in ("t1", "t2"):
            if key in getattr(self, name):
                self._pop(name, key)
                self._put(name, key, size)

    def on_remove(self, key):
        for name in ("t1", "t2"):
            if key in getattr(self, name):
                self._pop(name, key)

    def victim(self):
        if self.t1 and (self.bytes["t1"] > self.p or not self.t2):
            key, size = next(iter(self.t1.items()))
            ghost = "b1"
        else:
            key, size = next(iter(self.t2.items()))
            ghost = "b2"
        self._put(ghost, key, size)
        lst = getattr(self, ghost)
        while self.bytes[ghost] > self.capacity and lst:  # ghosts remember about a cache's worth
            self._pop(ghost, next(iter(lst)))
        return key
