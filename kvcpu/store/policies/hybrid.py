"""The hybrid: follows whichever of its experts does best on this workload."""

from __future__ import annotations

from collections import OrderedDict

from .base import Policy
from .simulate import ShadowCache

# The experts, trimmed by the held-out suite (bench/heldout.py): each wins somewhere the others
# do not cover. gd-small, gd-learn and gd-learn-small were indistinguishable from gds there.
EXPERTS = ("arc", "s3fifo", "gds", "reuse-rate")


class Hybrid(Policy):
    """Follows whichever of its experts is doing best on this workload, and switches when
    another starts doing better. The experts: recency and frequency adapted by ghost lists
    (ARC), probation before admission with a ghost (S3-FIFO), recency weighed by size
    (GreedyDual-Size: small and recent stay), each key's own rate of reuse per byte with the
    keys that stopped being used dropped first (reuse-rate).

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
        from . import POLICIES  # the registry holds the hybrid too

        super().__init__(capacity_bytes)
        self.experts = {name: POLICIES[name](capacity_bytes) for name in experts}
        self.shadows = {name: ShadowCache(POLICIES[name](capacity_bytes), capacity_bytes) for name in experts}
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
