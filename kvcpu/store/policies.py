"""Eviction policies: each one small class with the same few methods.

A policy only orders keys. Whoever holds the bytes (KVStore, or `simulate` here) keeps the
byte accounting and runs the eviction loop: insert, then while over budget, ask `victim()`,
remove that key, and tell the policy `on_remove`.
"""

from __future__ import annotations

import heapq
import math
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


class GDSmall(_PriorityPolicy):
    """GreedyDual leaning hard toward small entries: priority = L + sqrt(frequency) / size^1.5.
    For hit ratio among entries of very different sizes (bench/eviction.py found it the best
    single expert on the chat trace's smallest budget and the shift trace's largest)."""

    name = "gd-small"

    def priority(self, key, size, cost):
        return self.inflation + math.sqrt(self.freq[key]) / max(size, 1) ** 1.5


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


class _Shadow:
    """An expert's own cache of the same size, over keys and sizes only: how it would have done."""

    def __init__(self, name: str, capacity: int):
        self.policy = POLICIES[name](capacity)
        self.capacity, self.sizes, self.used = capacity, {}, 0

    def request(self, key, size: int, cost: float) -> bool:
        """Replay one request; True for a hit."""
        if key in self.sizes:
            self.used += size - self.sizes[key]
            self.sizes[key] = size
            self.policy.on_access(key, size, cost)
            hit = True
        else:
            if size > self.capacity:
                return False
            self.sizes[key] = size
            self.used += size
            self.policy.on_insert(key, size, cost)
            hit = False
        while self.used > self.capacity:
            victim = self.policy.victim()
            self.used -= self.sizes.pop(victim)
            self.policy.on_remove(victim)
        return hit


class Hybrid(Policy):
    """Follows whichever of its experts is doing best on this workload, and switches when
    another starts doing better: recency weighed by size (GreedyDual-Size: small and recent
    stay), recency and frequency adapted by ghost lists (ARC), and a GreedyDual that leans hard
    toward small entries (gd-small).

    Each expert also runs as a shadow cache of the same size over keys and sizes alone, so
    every request scores every expert (hits, decayed so the recent past counts most). The
    real evictions follow the expert with the best score: the store learns from the mistakes
    its shadows would have made, not only from its own. cost_aware=True scores experts by the
    prefill seconds their hits save instead of by hits.
    """

    name = "hybrid"

    def __init__(self, capacity_bytes: int, experts: tuple[str, ...] = ("gds", "arc", "gd-small"), decay: float = 0.999,
                 cost_aware: bool = False):
        super().__init__(capacity_bytes)
        self.experts = {name: POLICIES[name](capacity_bytes) for name in experts}
        self.shadows = {name: _Shadow(name, capacity_bytes) for name in experts}
        self.score = dict.fromkeys(experts, 0.0)
        self.decay, self.cost_aware = decay, cost_aware

    def _request(self, key, size, cost) -> None:
        gain = cost if self.cost_aware else 1.0
        for name, shadow in self.shadows.items():
            self.score[name] = self.score[name] * self.decay + (gain if shadow.request(key, size, cost) else 0.0)

    def on_insert(self, key, size, cost):
        self._request(key, size, cost)
        for e in self.experts.values():
            e.on_insert(key, size, cost)

    def on_access(self, key, size, cost):
        self._request(key, size, cost)
        for e in self.experts.values():
            e.on_access(key, size, cost)

    def on_remove(self, key):
        for e in self.experts.values():
            e.on_remove(key)

    def victim(self):
        leader = max(self.score, key=self.score.get)
        return self.experts[leader].victim()


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (LRU, FIFO, LFU, GDS, GDSF, GDSmall, S3FIFO, ARC)}
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
