"""Eviction by each key's own rate of reuse, and the keys that stopped being used go first."""

from __future__ import annotations

import heapq
from collections import OrderedDict

from .greedydual import GDLearn


class ReuseRate(GDLearn):
    """Keeps what is asked for most often per byte: value = P(reuse | size class) / (size *
    mean gap between the key's uses); the lowest value is evicted. But a key not asked for in
    OVERDUE_GAPS of its own mean gaps has most likely stopped being used (a conversation that
    ended, a user gone idle), so those go first, the most overdue first.

    A key's mean gap is (its span of uses + PRIOR_GAPS mean gaps of the whole workload) /
    uses: a new key starts at the workload's pace, weighted as PRIOR_GAPS gaps, and its own
    uses take over as they come. Time counts requests (inserts and hits), so nothing here is
    tied to one workload's time scale. P(reuse | size class) is gd-learn's, learned from keys
    that come back after eviction: on the chat trace it learns that a conversation at the
    context limit is replaced, not continued.

    Where the application says who asks (on_owner: a user, a tenant), a key whose owner has
    moved on to another key goes before all others, oldest first: someone who starts a new
    conversation is most likely done with the last one. Asked for again, it is not. Without
    owners, none of this applies.

    The GreedyDual inflation is not used: a key's value changes only when it is used or
    resized, and age counts only through the overdue rule, so both orders are heaps.
    """

    name = "reuse-rate"
    PRIOR_GAPS = 5.0
    OVERDUE_GAPS = 3.5

    def __init__(self, capacity_bytes: int):
        super().__init__(capacity_bytes)
        self.now = 0
        self.first: dict = {}  # key -> time of its first use
        self.last: dict = {}  # key -> time of its last use
        self.due: dict = {}  # key -> time after which it counts as overdue
        self.overdue: list = []  # heap of (due, tick, key); stale entries skipped
        self.mean_gap, self.gaps_seen = 1.0, 0
        self.current: dict = {}  # owner -> the key it asked for last, while resident
        self.owner_of: dict = {}  # resident key -> its owner
        self.left: OrderedDict = OrderedDict()  # resident keys whose owner moved on, oldest first

    def mean_gap_of(self, key) -> float:
        """The key's mean gap between uses, in requests, shrunk toward the workload's."""
        return (self.last[key] - self.first[key] + self.PRIOR_GAPS * self.mean_gap) / self.freq[key]

    def priority(self, key, size, cost):
        return self.reuse_probability(self.size_class[key][0]) / (max(size, 1) * self.mean_gap_of(key))

    def _set_due(self, key) -> None:
        self.due[key] = self.now + self.OVERDUE_GAPS * self.mean_gap_of(key)
        heapq.heappush(self.overdue, (self.due[key], self.tick, key))  # tick: keys never compared
        if len(self.overdue) > 4 * len(self.due) + 64:
            self.overdue = [(due, -i, k) for i, (k, due) in enumerate(self.due.items(), 1)]  # below any tick
            heapq.heapify(self.overdue)

    def on_insert(self, key, size, cost):
        self.now += 1
        self.first[key] = self.last[key] = self.now
        super().on_insert(key, size, cost)
        self._set_due(key)

    def on_access(self, key, size, cost):
        self.now += 1
        gap = self.now - self.last[key]
        self.gaps_seen += 1
        self.mean_gap += (gap - self.mean_gap) / min(self.gaps_seen, 1000)  # a mean, then a moving one
        self.last[key] = self.now
        super().on_access(key, size, cost)
        self._set_due(key)

    def on_resize(self, key, size):
        super().on_resize(key, size)
        self._set_due(key)  # as if just placed: not overdue right after a demotion

    def on_owner(self, key, owner):
        previous = self.current.get(owner)
        if previous is not None and previous != key:
            self.left[previous] = None
        self.left.pop(key, None)  # asked for again: not left after all
        before = self.owner_of.get(key)
        if before is not None and before != owner and self.current.get(before) == key:
            del self.current[before]  # current and owner_of stay each other's inverse, so on_remove clears both
        self.current[owner] = key
        self.owner_of[key] = owner

    def on_remove(self, key):
        for table in (self.first, self.last, self.due, self.left):
            table.pop(key, None)
        owner = self.owner_of.pop(key, None)
        if owner is not None and self.current.get(owner) == key:
            del self.current[owner]
        super().on_remove(key)

    def victim(self):
        if self.left:
            return next(iter(self.left))
        while self.overdue:
            due, _, key = self.overdue[0]
            if self.due.get(key) != due:
                heapq.heappop(self.overdue)  # stale: used, resized or removed since
            elif due < self.now:
                return key
            else:
                break
        return super().victim()
