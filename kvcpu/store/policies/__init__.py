"""Eviction policies, one small class each with the same few methods (base.Policy), the hybrid
that follows the best of them, `simulate`, which replays a trace, and the registry the store and
the benchmarks use. The store owns the byte accounting and the eviction loop; a policy only
orders keys.
"""

from __future__ import annotations

from .arc import ARC
from .base import Key, Policy
from .greedydual import GDS, GDSF, LFU, GDLearn
from .hybrid import EXPERTS, Hybrid
from .recency import FIFO, LRU
from .reuse_rate import ReuseRate
from .s3fifo import S3FIFO
from .simulate import ShadowCache, SimResult, simulate

__all__ = ["ARC", "EXPERTS", "FIFO", "GDS", "GDSF", "LFU", "LRU", "POLICIES", "S3FIFO", "GDLearn", "Hybrid", "Key",
           "Policy", "ReuseRate", "ShadowCache", "SimResult", "make_policy", "simulate"]

# The classics users expect, and what the held-out suite shows winning somewhere nothing else covers
POLICIES: dict[str, type[Policy]] = {p.name: p for p in (LRU, FIFO, LFU, GDS, GDSF, ReuseRate, S3FIFO, ARC, Hybrid)}


def make_policy(name: str, capacity_bytes: int, **params) -> Policy:
    """The policy called `name` over a budget of capacity_bytes."""
    try:
        return POLICIES[name](capacity_bytes, **params)
    except KeyError:
        from ...errors import KVCPUError

        raise KVCPUError(f"unknown eviction policy {name!r}; known: {sorted(POLICIES)}") from None
