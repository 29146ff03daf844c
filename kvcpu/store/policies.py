"""Eviction policies: each one small class with the same few methods.

A policy only orders keys. Whoever holds the bytes (KVStore, or `simulate` here) keeps the
byte accounting and runs the eviction loop: insert, then while over budget, ask `victim()`,
remove that key, and tell the policy `on_remove`.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass

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

    def victim(self) -> Key:
        """The key to evict next; the caller removes it and calls on_remove."""
        raise NotImplementedError


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

    def on_remove(self, key):
        self.order.pop(key, None)

    def victim(self):
        return next(iter(self.order))


class FIFO(LRU):
    """First in, first out: hits do not reorder."""

    name = "fifo"

    def on_access(self, key, size, cost):
        pass


class _PriorityPolicy(Policy):
    """Evicts the lowest priority; a heap with lazy deletion, and GreedyDual's inflation L."""

    def __init__(self, capacity_bytes: int):
        super().__init__(capacity_bytes)
        self.heap: list = []
        self.live: dict = {}  # key -> (priority, tick) of its current heap entry
        self.freq: dict = {}
        self.inflation = 0.0  # L: the priority of the last victim; new entries start above it
        self.tick = 0

    def priority(self, key, size, cost) -> float:
        raise NotImplementedError

    def _push(self, key, size, cost):
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

    def on_remove(self, key):
        self.live.pop(key, None)
        self.freq.pop(key, None)

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


class S3FIFO(Policy):
    """S3-FIFO (Yang et al., SOSP 2023): a small probationary FIFO (10% of bytes), a main FIFO
    with 2-bit frequencies, and a ghost FIFO of keys recently evicted from the small one."""

    name = "s3fifo"

    def __init__(self, capacity_bytes: int, small_fraction: float = 0.1):
        super().__init__(capacity_bytes)
        self.small: OrderedDict = OrderedDict()  # key -> size
        self.main: OrderedDict = OrderedDict()
        self.ghost: OrderedDict = OrderedDict()
        self.freq: dict = {}
        self.small_bytes = 0
        self.small_target = small_fraction * capacity_bytes
        self.ghost_limit = 1024

    def on_insert(self, key, size, cost):
        self.freq[key] = 0
        if key in self.ghost:
            del self.ghost[key]
            self.main[key] = size
        else:
            self.small[key] = size
            self.small_bytes += size

    def on_access(self, key, size, cost):
        self.freq[key] = min(self.freq[key] + 1, 3)
        if key in self.small:
            self.small_bytes += size - self.small[key]
            self.small[key] = size
        else:
            self.main[key] = size

    def on_remove(self, key):
        self.freq.pop(key, None)
        if key in self.small:
            self.small_bytes -= self.small.pop(key)
        self.main.pop(key, None)

    def victim(self):
        while True:
            if self.small and (self.small_bytes >= self.small_target or not self.main):
                key, size = next(iter(self.small.items()))
                if self.freq[key] > 0:  # seen again while on probation: promote
                    del self.small[key]
                    self.small_bytes -= size
                    self.main[key] = size
                    self.freq[key] = 0
                    continue
                self.ghost[key] = None
                if len(self.ghost) > self.ghost_limit:
                    self.ghost.popitem(last=False)
                return key
            key = next(iter(self.main))
            if self.freq[key] > 0:  # reinsert at the tail, one life spent
                self.freq[key] -= 1
                self.main.move_to_end(key)
                continue
            return key


class Hybrid(Policy):
    """Learns online which of its experts to follow, as LeCaR does. By default two experts see
    every key: recency weighed by size (GreedyDual-Size: small and recent stay) and scan
    resistance with frequency (S3-FIFO: one-off entries leave first). bench/eviction.py
    measured this pair against three (adding GreedyDual-Size-Frequency) and LFU variants.

    A victim is the choice of an expert drawn by weight; the key goes into that expert's
    ghost history. A later miss on a ghost key is that expert's regret: its weight shrinks by
    exp(-rate * discount^age), so the expert that fits the workload wins out. cost_aware=True
    values entries by the prefill seconds they save rather than one hit each.
    """

    name = "hybrid"

    def __init__(self, capacity_bytes: int, learning_rate: float = 0.45, seed: int = 0,
                 cost_aware: bool = False, experts: tuple[str, ...] = ("gds", "s3fifo")):
        super().__init__(capacity_bytes)
        self.experts = {name: POLICIES[name](capacity_bytes) for name in experts}
        self.weights = {name: 1 / len(experts) for name in experts}
        self.ghosts: dict[str, OrderedDict] = {name: OrderedDict() for name in experts}
        self.rate = learning_rate
        self.cost_aware = cost_aware
        self.rng = random.Random(seed)
        self.time = 0
        self.resident = 0
        self.discount = 0.005 ** (1 / 256)

    def _cost(self, cost):
        return cost if self.cost_aware else 1.0

    def on_insert(self, key, size, cost):
        self.time += 1
        self.resident += 1
        for name, ghost in self.ghosts.items():
            evicted_at = ghost.pop(key, None)
            if evicted_at is not None:  # this expert evicted a key that came back: its regret
                self.weights[name] *= math.exp(-self.rate * self.discount ** (self.time - evicted_at))
        total = sum(self.weights.values())
        self.weights = {n: max(w / total, 0.01) for n, w in self.weights.items()}
        for e in self.experts.values():
            e.on_insert(key, size, self._cost(cost))

    def on_access(self, key, size, cost):
        self.time += 1
        for e in self.experts.values():
            e.on_access(key, size, self._cost(cost))

    def on_remove(self, key):
        self.resident -= 1
        for e in self.experts.values():
            e.on_remove(key)

    def victim(self):
        names = list(self.weights)
        name = self.rng.choices(names, weights=[self.weights[n] for n in names])[0]
        key = self.experts[name].victim()
        ghost = self.ghosts[name]
        ghost[key] = self.time
        if len(ghost) > max(self.resident, 64):
            ghost.popitem(last=False)
        return key


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (LRU, FIFO, LFU, GDS, GDSF, S3FIFO)}
POLICIES["hybrid"] = Hybrid


def make_policy(name: str, capacity_bytes: int, **params) -> Policy:
    """The policy called `name` over a budget of capacity_bytes."""
    try:
        return POLICIES[name](capacity_bytes, **params)
    except KeyError:
        from ..errors import KVCPUError

        raise KVCPUError(f"unknown eviction policy {name!r}; known: {sorted(POLICIES)}") from None


@dataclass(frozen=True)
class SimResult:
    """What a replay of a trace through a policy achieved."""

    policy: str
    capacity_bytes: int
    requests: int
    hits: int
    hit_ratio: float
    byte_hit_ratio: float
    prefill_saved_s: float
    prefill_total_s: float
    evictions: int

    def as_dict(self) -> dict:
        return asdict(self)


def simulate(policy: Policy | str, trace: Iterable[tuple[Key, int, float]], capacity_bytes: int) -> SimResult:
    """Replay (key, size_bytes, prefill_cost_s) requests; a hit saves its cost. The byte
    accounting and the eviction loop are the same as KVStore's."""
    if isinstance(policy, str):
        policy = make_policy(policy, capacity_bytes)
    resident: dict = {}
    used = requests = hits = evictions = 0
    bytes_total = bytes_hit = 0
    saved = total_cost = 0.0
    for key, size, cost in trace:
        requests += 1
        bytes_total += size
        total_cost += cost
        if key in resident:
            hits += 1
            bytes_hit += size
            saved += cost
            used += size - resident[key]
            resident[key] = size
            policy.on_access(key, size, cost)
        elif size <= capacity_bytes:
            resident[key] = size
            used += size
            policy.on_insert(key, size, cost)
        while used > capacity_bytes:
            victim = policy.victim()
            used -= resident.pop(victim)
            policy.on_remove(victim)
            evictions += 1
    return SimResult(policy.name, capacity_bytes, requests, hits, hits / max(requests, 1),
                     bytes_hit / max(bytes_total, 1), saved, total_cost, evictions)
