"""Eviction policies, one small class each with the same few methods (policy_base.Policy),
the hybrid that follows the best of them, and `simulate`, which replays a trace.

Queue-based policies live in queues.py, GreedyDual ones in greedydual.py; this module is the
registry the store and the benchmarks use.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from .greedydual import GDS, GDSF, LFU, GDLearn, GDLearnSmall, GDSmall
from .policy_base import Key, Policy
from .queues import ARC, FIFO, LRU, S3FIFO
from .rate import ReuseRate

__all__ = ["ARC", "FIFO", "GDS", "GDSF", "LFU", "LRU", "POLICIES", "S3FIFO", "GDLearn", "GDLearnSmall", "GDSmall",
           "Hybrid", "Key", "Policy", "ReuseRate", "SimResult", "make_policy", "simulate"]

EXPERTS = ("arc", "s3fifo", "gds", "reuse-rate", "gd-learn-small")


class _Cache:
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


class Hybrid(Policy):
    """Follows whichever of its experts is doing best on this workload, and switches when
    another starts doing better. The experts: recency and frequency adapted by ghost lists
    (ARC), probation before admission with a ghost (S3-FIFO), recency weighed by size
    (GreedyDual-Size: small and recent stay), each key's own rate of reuse per byte with the
    keys that stopped being used dropped first (reuse-rate), and a GreedyDual that learns
    which sizes get reused and leans hard toward small entries (gd-learn-small).

    Each expert also runs as a shadow cache of the same size over keys and sizes alone, so
    every request scores every expert (hits, decayed so the recent past counts most). The
    real evictions follow the leader, the expert with the best score: the store learns from
    the mistakes its shadows would have made, not only from its own. The leader changes only
    when another expert leads it by SWITCH_MARGIN hits: near-ties (two experts as good as each
    other) would otherwise swap it back and forth, and each swap costs hits.

    The real cache holds what the past leaders kept, which is not what the leader's shadow
    holds. So the leader's first victims are the resident keys its own shadow has already
    evicted, oldest first; only then its own order. That way the real cache converges to the
    leader's contents instead of mixing the experts'. Owners (on_owner) reach the experts and
    the shadows with the request they are about. cost_aware=True scores experts by the
    prefill seconds their hits save instead of by hits.
    """

    name = "hybrid"
    SWITCH_MARGIN = 1.0  # in hits (cost-aware: in mean prefill seconds saved per hit)

    def __init__(self, capacity_bytes: int, experts: tuple[str, ...] = EXPERTS, decay: float = 0.999,
                 cost_aware: bool = False):
        super().__init__(capacity_bytes)
        self.experts = {name: POLICIES[name](capacity_bytes) for name in experts}
        self.shadows = {name: _Cache(POLICIES[name](capacity_bytes), capacity_bytes) for name in experts}
        self.score = dict.fromkeys(experts, 0.0)
        self.leader = experts[0]
        self.resident: set = set()
        self.not_in_shadow = {name: OrderedDict() for name in experts}  # resident keys a shadow evicted
        self.decay, self.cost_aware = decay, cost_aware
        self.gain_sum, self.gains = 0.0, 0
        self.owner = None  # who asks, for the request under way

    def _request(self, key, size, cost) -> None:
        gain = cost if self.cost_aware else 1.0
        self.gain_sum, self.gains = self.gain_sum + gain, self.gains + 1
        owner, self.owner = self.owner, None
        for name, shadow in self.shadows.items():
            hit = shadow.request(key, size, cost, owner)
            self.score[name] = self.score[name] * self.decay + (gain if hit else 0.0)
            gone = self.not_in_shadow[name]
            gone.pop(key, None)
            for k in shadow.evicted:  # the requested key itself, when its size outgrows the budget
                if k in self.resident:
                    gone[k] = None
        best = max(self.score, key=self.score.get)
        if self.score[best] > self.score[self.leader] + self.SWITCH_MARGIN * self.gain_sum / self.gains:
            self.leader = best

    def on_insert(self, key, size, cost):
        self.resident.add(key)
        self._request(key, size, cost)
        for e in self.experts.values():
            e.on_insert(key, size, cost)

    def on_access(self, key, size, cost):
        self._request(key, size, cost)
        for e in self.experts.values():
            e.on_access(key, size, cost)

    def on_owner(self, key, owner):
        self.owner = owner  # the shadows hear it with the request itself
        for e in self.experts.values():
            e.on_owner(key, owner)

    def on_resize(self, key, size):
        for gone in self.not_in_shadow.values():  # requeued: the experts' own order decides again
            gone.pop(key, None)
        for e in self.experts.values():  # not a request: the shadows hold their own entries
            e.on_resize(key, size)

    def on_remove(self, key):
        self.resident.discard(key)
        for gone in self.not_in_shadow.values():
            gone.pop(key, None)
        for e in self.experts.values():
            e.on_remove(key)

    def victim(self):
        gone = self.not_in_shadow[self.leader]
        if gone:
            return next(iter(gone))
        return self.experts[self.leader].victim()


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (LRU, FIFO, LFU, GDS, GDSF, GDSmall, GDLearn, GDLearnSmall,
                                                          ReuseRate, S3FIFO, ARC)}
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


def simulate(policy: Policy | str, trace: Iterable[tuple], capacity_bytes: int) -> SimResult:
    """Replay (key, size_bytes, prefill_cost_s) requests, or (key, size_bytes, prefill_cost_s,
    owner) where the application says who asks; a hit saves its cost. The byte accounting and
    the eviction loop are the same as KVStore's."""
    if isinstance(policy, str):
        policy = make_policy(policy, capacity_bytes)
    cache = _Cache(policy, capacity_bytes)
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
