"""GreedyDual policies: a priority per key, the lowest evicted, and an inflation L (the last
victim's priority) that every new priority starts from, so that what is not used again ages."""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict

from .base import Policy


class _PriorityPolicy(Policy):
    """Evicts the lowest priority; a heap with lazy deletion, and GreedyDual's inflation L."""

    def __init__(self, capacity_bytes: int):
        super().__init__(capacity_bytes)
        self.heap: list = []
        self.live: dict = {}  # key -> (priority, tick) of its current heap entry
        self.freq: dict = {}
        self.cost: dict = {}  # key -> cost last given, for re-ranking on a resize
        self.inflation = 0.0  # L: the priority of the last victim; new entries start above it
        self.tick = 0

    def priority(self, key, size, cost) -> float:
        raise NotImplementedError

    def _push(self, key, size, cost):
        self.cost[key] = cost
        self.tick += 1
        entry = (self.priority(key, size, cost), self.tick)
        self.live[key] = entry
        heapq.heappush(self.heap, (*entry, key))
        if len(self.heap) > 4 * len(self.live) + 64:  # drop stale entries now and then
            self.heap = [(p, t, k) for k, (p, t) in self.live.items()]
            heapq.heapify(self.heap)

    def on_insert(self, key, size, cost):
        self.freq[key] = 1
        self._push(key, size, cost)

    def on_access(self, key, size, cost):
        self.freq[key] += 1
        self._push(key, size, cost)

    def on_resize(self, key, size):
        self._push(key, size, self.cost[key])  # same use count, new size

    def on_remove(self, key):
        self.live.pop(key, None)
        self.freq.pop(key, None)
        self.cost.pop(key, None)

    def victim(self):
        while True:
            prio, tick, key = self.heap[0]
            if self.live.get(key) == (prio, tick):
                self.inflation = prio
                return key
            heapq.heappop(self.heap)  # stale: superseded or removed


class LFU(_PriorityPolicy):
    """Least frequently used with dynamic aging (LFU-DA): priority = L + frequency, so that
    old popularity fades as L rises with every eviction."""

    name = "lfu"

    def priority(self, key, size, cost):
        return self.inflation + self.freq[key]


class GDSF(_PriorityPolicy):
    """GreedyDual-Size-Frequency: priority = L + frequency * cost / size; cost is what a hit
    saves (prefill seconds), so it keeps what saves most per byte."""

    name = "gdsf"

    def priority(self, key, size, cost):
        return self.inflation + self.freq[key] * max(cost, 1e-9) / max(size, 1)


class GDS(_PriorityPolicy):
    """GreedyDual-Size with unit cost: priority = L + 1 / size. Recency through the aging of
    L, and small entries first: what maximizes the number of hits per byte."""

    name = "gds"

    def priority(self, key, size, cost):
        return self.inflation + 1.0 / max(size, 1)


class GDLearn(_PriorityPolicy):
    """GreedyDual whose value per byte is a hit probability learned per size class: priority =
    L + P(reuse | size class) / size, in the spirit of LHD (Beckmann et al., NSDI 2018).

    A key's reuse counts for the size class it had when last used; a key that leaves and is
    not asked for again while a budget's worth of bytes are remembered after it counts as a
    death in its class. Where size says something about the future (a conversation near the
    context limit is about to be replaced by a new one), it learns that; where it says
    nothing, it is GreedyDual-Size. Counts halve every 20,000 events, so the recent past
    weighs most.
    """

    name = "gd-learn"
    CLASSES_PER_DOUBLING = 16  # 4 blurred the chat trace's context-limit edge: 0.8 points of hit ratio at 5%
    HALF_LIFE_EVENTS = 20_000

    def __init__(self, capacity_bytes: int):
        super().__init__(capacity_bytes)
        self.size_class: dict = {}  # resident key -> (class, size) when last used
        self.ghost: OrderedDict = OrderedDict()  # evicted key -> (class, size)
        self.ghost_bytes = 0
        self.reuses: dict[int, float] = {}
        self.deaths: dict[int, float] = {}
        self.events = 0

    def _class(self, size: int) -> int:
        return int(math.log2(max(size, 1)) * self.CLASSES_PER_DOUBLING)

    def _count(self, table: dict, cls: int) -> None:
        table[cls] = table.get(cls, 0.0) + 1.0
        self.events += 1
        if self.events >= self.HALF_LIFE_EVENTS:
            self.events = 0
            for t in (self.reuses, self.deaths):
                for c in t:
                    t[c] *= 0.5

    def reuse_probability(self, cls: int) -> float:
        """Laplace-smoothed share of reuses among the class's reuses and deaths."""
        r, d = self.reuses.get(cls, 0.0), self.deaths.get(cls, 0.0)
        return (r + 1.0) / (r + d + 2.0)

    def priority(self, key, size, cost):
        return self.inflation + self.reuse_probability(self.size_class[key][0]) / max(size, 1)

    def on_insert(self, key, size, cost):
        if key in self.ghost:  # it came back: a reuse its class would have had
            cls, old = self.ghost.pop(key)
            self.ghost_bytes -= old
            self._count(self.reuses, cls)
        self.size_class[key] = (self._class(size), size)
        super().on_insert(key, size, cost)

    def on_access(self, key, size, cost):
        self._count(self.reuses, self.size_class[key][0])
        self.size_class[key] = (self._class(size), size)
        super().on_access(key, size, cost)

    def on_resize(self, key, size):
        self.size_class[key] = (self.size_class[key][0], size)  # its class stays the one it was used at
        super().on_resize(key, size)

    def on_remove(self, key):
        cls, size = self.size_class.pop(key)
        self.ghost[key] = (cls, size)
        self.ghost_bytes += size
        while self.ghost_bytes > self.capacity and self.ghost:  # forgotten without a return: a death
            _, (old_cls, old_size) = self.ghost.popitem(last=False)
            self.ghost_bytes -= old_size
            self._count(self.deaths, old_cls)
        super().on_remove(key)
