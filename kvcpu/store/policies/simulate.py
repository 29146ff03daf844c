"""`simulate`: a trace replayed through a policy, with KVStore's byte accounting and eviction
loop over keys and sizes alone (ShadowCache, also each of the hybrid's shadows)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from .base import Policy


class ShadowCache:
    """A cache over keys and sizes alone, ordered by a policy, with KVStore's byte accounting
    and eviction loop: what `simulate` replays through, and each of the hybrid's shadows (how
    an expert would have done with a cache of its own)."""

    def __init__(self, policy: Policy, capacity: int):
        self.policy = policy
        self.capacity, self.sizes, self.used = capacity, {}, 0
        self.evicted: list = []  # what the last request pushed out

    def request(self, key, size: int, cost: float, owner=None) -> bool:
        """Replay one request; True for a hit."""
        self.evicted = []
        hit = key in self.sizes
        if not hit and size > self.capacity:
            return False
        if owner is not None:
            self.policy.on_owner(key, owner)
        self.used += size - self.sizes.get(key, 0)
        self.sizes[key] = size
        if hit:
            self.policy.on_access(key, size, cost)
        else:
            self.policy.on_insert(key, size, cost)
        while self.used > self.capacity:
            victim = self.policy.victim()
            self.used -= self.sizes.pop(victim)
            self.policy.on_remove(victim)
            self.evicted.append(victim)
        return hit


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


def simulate(policy: Policy | str, trace: Iterable[tuple], capacity_bytes: int) -> SimResult:
    """Replay (key, size_bytes, prefill_cost_s) requests, or (key, size_bytes, prefill_cost_s,
    owner) where the application says who asks; a hit saves its cost. The byte accounting and
    the eviction loop are the same as KVStore's."""
    if isinstance(policy, str):
        from . import make_policy

        policy = make_policy(policy, capacity_bytes)
    cache = ShadowCache(policy, capacity_bytes)
    requests = hits = evictions = bytes_total = bytes_hit = 0
    saved = total_cost = 0.0
    for key, size, cost, *owner in trace:
        requests += 1
        bytes_total += size
        total_cost += cost
        if cache.request(key, size, cost, owner[0] if owner else None):
            hits += 1
            bytes_hit += size
            saved += cost
        evictions += len(cache.evicted)
    return SimResult(policy.name, capacity_bytes, requests, hits, hits / max(requests, 1),
                     bytes_hit / max(bytes_total, 1), saved, total_cost, evictions)
